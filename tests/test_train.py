"""Training engine on tiny generated data with timm's test models (CPU, seconds)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from jianmu.config import load_config, save_config
from jianmu.data.dataset import EpochSampler, class_balanced_weights
from jianmu.data.synth import generate_dataset
from jianmu.engine.train import train
from jianmu.errors import JianmuError
from jianmu.models import load_checkpoint


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "data"
    generate_dataset(root, "wood", classes=3, per_class=16, size=48, specimens_per_class=4, seed=1)
    return root


def toy_config(root, out, *overrides):
    return load_config(
        overrides=[
            f"data.root={root}",
            *([f"out={out}"] if out is not None else []),
            "model.name=test_resnet",
            "model.img_size=32",
            "train.epochs=2",
            "train.batch_size=8",
            "train.workers=0",
            "train.warmup_epochs=0",
            "train.amp=off",
            "eval.batch_size=16",
            *overrides,
        ]
    )


def test_one_run_writes_every_file(toy_data, tmp_path):
    result = train(toy_config(toy_data, tmp_path / "run"))
    names = {p.name for p in result.run_dir.iterdir()}
    expected = {"config.yaml", "manifest.csv", "metrics.csv", "curves.png", "best.safetensors"}
    expected |= {"last.safetensors", "last.state.pt", "test_metrics.json"}
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "train_loss" in rows[0] and "images_per_s" in rows[0]
    assert rows[0].split(",")[:1] == ["epoch"]
    checkpoint = load_checkpoint(result.run_dir)
    meta = checkpoint.meta
    assert meta["classes"] == result.classes == sorted(result.classes)
    assert meta["model_name"] == "test_resnet" and meta["preprocessing"]["input_size"] == 32
    assert meta["taxonomy"]["domain"] == "wood" and len(meta["manifest_sha256"]) == 64
    assert meta["config"]["train"]["epochs"] == 2 and meta["epoch"] == result.best_epoch
    assert "val_top1" in meta["metrics"]
    test_metrics = json.loads((result.run_dir / "test_metrics.json").read_text())
    assert test_metrics == pytest.approx(result.test_metrics)
    assert test_metrics["test_images"] > 0
    with safe_open(str(result.run_dir / "best.safetensors"), framework="pt") as reader:
        assert "jianmu" in reader.metadata()
    assert any("not in the wood taxonomy" in w for w in result.warnings)


def test_loss_goes_down_on_a_learnable_set(toy_data, tmp_path):
    result = train(
        toy_config(toy_data, tmp_path / "run", "train.epochs=8", "train.lr=0.01", "seed=3")
    )
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.best_metrics["metrics"]["val_top1"] > 1 / 3


def test_same_seed_same_result(toy_data, tmp_path):
    first = train(toy_config(toy_data, tmp_path / "a"))
    second = train(toy_config(toy_data, tmp_path / "b"))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]


def test_existing_run_is_never_overwritten(toy_data, tmp_path):
    config = toy_config(toy_data, tmp_path / "run", "train.epochs=1")
    train(config)
    before = (tmp_path / "run" / "best.safetensors").read_bytes()
    with pytest.raises(JianmuError, match="already holds a run"):
        train(config)
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == before


def test_ema_is_evaluated_and_tracks_the_weights(toy_data, tmp_path):
    result = train(toy_config(toy_data, tmp_path / "run", "train.ema=true", "train.epochs=3"))
    assert all(
        "ema_val_top1" in row and row["weights"] in ("ema", "model") for row in result.history
    )
    state = torch.load(result.run_dir / "last.state.pt", weights_only=True)
    name = next(key for key, value in state["model"].items() if value.dim() == 4)  # first conv
    assert not torch.equal(state["ema"][f"module.{name}"], state["model"][name])  # an average
    without = train(toy_config(toy_data, tmp_path / "plain", "train.epochs=3"))
    assert "ema_val_top1" not in without.history[-1]


def test_mixup_cutmix_and_clipping_train(toy_data, tmp_path):
    options = ["train.mixup=0.2", "train.cutmix=1.0", "train.grad_clip=1.0", "train.epochs=2"]
    result = train(toy_config(toy_data, tmp_path / "run", *options))
    assert len(result.history) == 2
    with pytest.raises(JianmuError, match="even"):
        train(toy_config(toy_data, tmp_path / "odd", "train.mixup=0.2", "train.batch_size=7"))


def test_class_weighted_loss_favours_rare_classes():
    from jianmu.config import TrainConfig
    from jianmu.engine.splits import DataSplits
    from jianmu.engine.train import build_loss

    items = [("a", 0)] * 30 + [("b", 1)] * 10
    splits = DataSplits(None, ["a", "b"], [None, None], {"train": items}, "")
    loss_fn, mixup = build_loss(TrainConfig(imbalance="loss"), splits, torch.device("cpu"))
    assert mixup is None
    assert loss_fn.weight.tolist() == pytest.approx([40 / 60, 40 / 20])
    plain, _ = build_loss(TrainConfig(), splits, torch.device("cpu"))
    assert plain.weight is None


def test_early_stopping_stops(toy_data, tmp_path):
    # A learning rate this small cannot improve val loss for long: patience 1 stops the run.
    result = train(
        toy_config(
            toy_data,
            tmp_path / "run",
            "train.epochs=20",
            "train.lr=1e-9",
            "train.scheduler=none",
            "train.monitor=val_loss",
            "train.early_stopping_patience=1",
        )
    )
    assert result.stopped_early
    assert len(result.history) < 20
    assert result.history[-1]["epoch"] - result.best_epoch == 1


def test_class_balanced_sampler_evens_out_classes():
    labels = [0] * 90 + [1] * 10
    sampler = EpochSampler(100, seed=0, weights=class_balanced_weights(labels))
    drawn = [labels[index] for _, index in sampler]
    assert 0.35 < sum(drawn) / len(drawn) < 0.65  # about half from the rare class
    plain = [labels[index] for _, index in EpochSampler(100, seed=0)]
    assert sum(plain) == 10


def test_sampler_shards_are_disjoint_and_cover_the_data():
    shards = [list(EpochSampler(10, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    indices = [index for shard in shards for _, index in shard]
    assert sorted(indices) == list(range(10))
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in EpochSampler(10, seed=5)]


def test_imbalance_options_run(toy_data, tmp_path):
    for option in ("sampler", "loss"):
        result = train(toy_config(toy_data, tmp_path / option, f"train.imbalance={option}"))
        assert len(result.history) == 2


def test_single_class_dataset_is_refused(tmp_path):
    root = tmp_path / "one"
    generate_dataset(root, "wood", classes=1, per_class=8, size=32, specimens_per_class=4)
    with pytest.raises(JianmuError, match="at least 2 classes"):
        train(toy_config(root, tmp_path / "run"))
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_class_without_validation_images_is_refused(toy_data, tmp_path):
    with pytest.raises(JianmuError, match="no val images"):
        train(toy_config(toy_data, tmp_path / "run", "data.val_fraction=0.0"))


def test_resume_refuses_a_different_class_list(toy_data, tmp_path):
    result = train(toy_config(toy_data, tmp_path / "run", "train.epochs=1"))
    manifest = result.run_dir / "manifest.csv"
    lines = manifest.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if result.classes[0] not in line]
    other = tmp_path / "other.csv"
    other.write_text("\n".join(kept) + "\n")
    config_path = result.run_dir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("manifest: null", f"manifest: {other}"))
    with pytest.raises(JianmuError, match="different class list"):
        train(load_config(config_path), resume=result.run_dir)


def test_full_disk_leaves_no_half_written_checkpoint(toy_data, tmp_path, monkeypatch):
    import jianmu.models

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jianmu.models, "save_file", no_space)
    with pytest.raises(JianmuError, match="No space left on device"):
        train(toy_config(toy_data, tmp_path / "run", "train.epochs=1"))
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if "safetensors" in p.name]
    assert leftovers == []


def test_kill_and_resume_equals_uninterrupted(toy_data, tmp_path):
    # deterministic: on CUDA, cuDNN autotuning picks kernels per process, so two processes differ
    overrides = [
        "train.epochs=4",
        "train.batch_size=4",
        "train.ema=true",
        "train.deterministic=true",
    ]
    reference = train(toy_config(toy_data, tmp_path / "reference", *overrides))
    config_path = save_config(toy_config(toy_data, None, *overrides), tmp_path / "toy.yaml")
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jianmu", "train", str(config_path), "--out", str(run), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    metrics = run / "metrics.csv"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # epoch 1 saved
            break
        time.sleep(0.01)
    assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_done = len(metrics.read_text().splitlines()) - 1
    assert 1 <= epochs_done < 4
    resumed = train(load_config(run / "config.yaml"), resume=run)
    assert len(resumed.history) == 4
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4, abs=1e-5)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4, abs=1e-5)
    assert resumed.test_metrics == pytest.approx(reference.test_metrics, rel=1e-4, abs=1e-5)
    final = load_checkpoint(run / "last.safetensors").state_dict
    expected = load_checkpoint(tmp_path / "reference" / "last.safetensors").state_dict
    for name, tensor in expected.items():
        assert torch.allclose(final[name], tensor, atol=1e-4), name


def test_cross_validation_folds_are_disjoint_and_reused(toy_data, tmp_path):
    from jianmu.engine.crossval import cross_validate, make_folds

    config = toy_config(toy_data, tmp_path / "cv", "train.epochs=1")
    folds = make_folds(config, 3)
    tests = [{row.path for row in rows if row.split == "test"} for rows in folds]
    assert sum(len(t) for t in tests) == 48 and len(set().union(*tests)) == 48
    for rows in folds:
        specimens = {}
        for row in rows:
            specimens.setdefault(row.specimen, set()).add(row.split)
        assert all(len(splits) == 1 for splits in specimens.values())
        assert {row.split for row in rows} == {"train", "val", "test"}
    result = cross_validate(config, 3)
    assert len(result.folds) == 3
    summary = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert summary["mean"]["test_top1"] == pytest.approx(result.mean("test_top1"))
    for fold in result.folds:
        assert (fold.run_dir / "test_metrics.json").is_file()
    again = cross_validate(config, 3)  # finished folds are reused, not retrained
    assert all(fold.reused for fold in again.folds)
    assert again.mean("test_top1") == pytest.approx(result.mean("test_top1"))


def test_cli_train_prints_a_summary_and_refuses_bad_values(toy_data, tmp_path):
    from typer.testing import CliRunner

    from jianmu.cli import app

    config_path = save_config(toy_config(toy_data, None, "train.epochs=1"), tmp_path / "toy.yaml")
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "test_top1" in result.output and "best checkpoint" in result.output
    bad = runner.invoke(app, ["train", str(config_path), "--set", "train.lr=-1"])
    assert bad.exit_code == 2 and "train.lr" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["train", str(config_path), "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_ddp_two_gloo_processes(toy_data, tmp_path):
    """torchrun with 2 CPU processes: disjoint shards, one checkpoint in the usual format."""
    config_path = save_config(toy_config(toy_data, None, "train.epochs=1"), tmp_path / "toy.yaml")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU on GPU hosts too
    result = subprocess.run(
        [*torchrun, "-m", "jianmu", "train", str(config_path), "--out", str(run), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best checkpoint") == 1  # rank 0 alone reports
    shards = [json.loads((run / f"shard_rank{r}.json").read_text())["indices"] for r in (0, 1)]
    assert shards[0] and len(shards[0]) == len(shards[1])
    train_rows = sum(line.split(",")[3] == "train" for line in (run / "manifest.csv").open())
    assert len(set(shards[0]) & set(shards[1])) <= 1  # disjoint (one pad index when odd)
    assert len(set(shards[0]) | set(shards[1])) == train_rows
    single = train(toy_config(toy_data, tmp_path / "single", "train.epochs=1"))
    ddp_checkpoint = load_checkpoint(run)
    single_checkpoint = load_checkpoint(single.run_dir)
    assert ddp_checkpoint.meta.keys() == single_checkpoint.meta.keys()
    assert ddp_checkpoint.state_dict.keys() == single_checkpoint.state_dict.keys()
    assert ddp_checkpoint.classes == single_checkpoint.classes


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(JianmuError, match="nothing to resume"):
        train(toy_config(tmp_path, tmp_path / "run"), resume=tmp_path)
