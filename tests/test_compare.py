"""`jianmu compare`, the release gate: a model compared with itself passes, a deliberately worse
model (one class's training images mislabelled) is caught and the class named, a class only one
model knows is reported and not compared, bad input is one line and exit 2; and `jianmu bench`
runs the gate against a suite's `compare_with` model."""

import dataclasses
import json

import pytest
import yaml
from tiny import settings, tiny_config
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.config import BenchData
from jianmu.data.split import read_manifest, write_manifest
from jianmu.data.synth import generate_dataset
from jianmu.engine.bench import bench, release_gate
from jianmu.engine.compare import compare, count_floored, judge, resolve_tolerances
from jianmu.engine.train import train

CLASSES = ["Dalbergia_odorifera", "Pterocarpus_santalinus", "Tectona_grandis"]
SPOILED, INTO = CLASSES[0], CLASSES[1]
# Keep the tests quick: a short speed measurement on the handful of test images.
FAST = ["compare.speed_seconds=0.1", "compare.speed_rounds=1", "compare.speed_images=8"]
# Images/s of one model measured twice on this shared 2-core machine differ by more than the
# default 20% when other jobs run: the self-comparisons report speed without judging it, and
# test_speed_is_judged_as_a_ratio checks the rule on figures.
NO_SPEED_RULE = ["compare.tolerances.images_per_s=null"]


def _train(data, out, *overrides):
    return train(tiny_config(data, out, "train.quiet=true", *overrides)).run_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model, the same recipe with all but one of SPOILED's training images labelled INTO,
    a model sharing one class with them, one sharing none, and folders of unknown species."""
    base = tmp_path_factory.mktemp("compare")
    data = base / "data"
    generate_dataset(data, "wood", classes=3, per_class=16, size=48, seed=2, class_names=CLASSES)
    good = _train(data, base / "good")
    frozen = good / "manifest.csv"
    rows, spoiled = [], 0
    for row in read_manifest(frozen):
        if row.label == SPOILED and row.split == "train":
            spoiled += 1
            if spoiled > 1:  # one stays, so that the class still trains
                row = dataclasses.replace(row, label=INTO)
        rows.append(row)
    mislabelled = write_manifest(base / "mislabelled.csv", rows)
    worse = _train(data, base / "worse", f"data.manifest={mislabelled}")
    strangers = base / "strangers"  # species none of the models below knows
    names = ["Senna_siamea", "Dalbergia_cultrata"]
    generate_dataset(strangers, "wood", classes=2, per_class=6, size=48, seed=9, class_names=names)
    other = base / "other"
    names = ["Swietenia_macrophylla", "Tectona_grandis"]
    generate_dataset(other, "wood", classes=2, per_class=8, size=48, seed=5, class_names=names)
    one = "train.epochs=1"
    return {
        "base": base,
        "data": data,
        "frozen": frozen,
        "mislabelled": mislabelled,
        "good": good,
        "worse": worse,
        "partial": _train(other, base / "partial", one),
        "disjoint": _train(strangers, base / "disjoint", one),
        "strangers": strangers,
    }


def _config(models, out, *overrides):
    return settings(
        *FAST, *overrides, data__root=models["data"], data__manifest=models["frozen"], out=out
    )


def _cli(models, old, new, out, *more):
    arguments = ["compare", str(old), str(new), "--data", str(models["data"]),
                 "--manifest", str(models["frozen"]), "--out", str(out)]  # fmt: skip
    for override in FAST:
        arguments += ["--set", override]
    return CliRunner().invoke(app, arguments + list(more))


def test_a_model_compared_with_itself_has_no_regression(models, tmp_path):
    config = _config(models, tmp_path / "library", *NO_SPEED_RULE)
    result = compare(config, models["good"], models["good"], unknown=[models["strangers"]])
    assert result.ok and result.regressions == []
    old, new = result.figures["old"], result.figures["new"]
    assert set(old) == set(new)
    assert {name: old[name] for name in old if name != "images_per_s"} == {
        name: new[name] for name in new if name != "images_per_s"
    }
    for name in ("top1", "macro_f1", "ece", "specimen_top1", "unknown_rejection", "ranks_wrong"):
        assert name in old, name
    assert {f"class_recall.{name}" for name in CLASSES} <= set(old)
    assert old["images_per_s"] > 0 and new["images_per_s"] > 0
    assert result.images == 12 and result.unknown_images == 12  # 4 test images a class; 2 x 6
    judged = {row.figure for row in result.comparison.rows if row.limit}
    assert {"top1", "macro_f1", "ece", "unknown_rejection", f"class_recall.{SPOILED}"} <= judged
    assert "images_per_s" not in judged  # null: reported, not judged

    done = _cli(models, models["good"], models["good"], tmp_path / "cli", "--set",
                NO_SPEED_RULE[0], "--unknown", str(models["strangers"]))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "PASS" in done.output and "regression:" not in done.output
    saved = json.loads((tmp_path / "cli" / "compare.json").read_text())
    assert saved["ok"] is True and saved["regressions"] == []
    assert saved["figures"]["old"]["top1"] == pytest.approx(old["top1"])


def test_a_worse_model_is_caught_and_the_spoiled_class_named(models, tmp_path):
    out = tmp_path / "gate"
    done = _cli(models, models["good"], models["worse"], out, "--unknown", str(models["strangers"]))
    assert done.exit_code == 1, done.output
    assert f"class_recall.{SPOILED}" in done.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["ok"] is False
    old, new = saved["figures"]["old"], saved["figures"]["new"]
    recall = f"class_recall.{SPOILED}"
    assert old[recall] - new[recall] >= 0.5  # the spoiled class really got worse
    named = [message for message in saved["regressions"] if message.startswith("class_recall.")]
    assert named and all(message.startswith(recall + " ") for message in named)
    assert f"class_recall.{INTO}" not in " ".join(saved["regressions"])  # it gained the images
    markdown = (out / "compare.md").read_text()
    assert "**FAIL**" in markdown and f"- {recall} " in markdown
    for report in ("old/report.html", "new/report.html", "items.csv"):
        assert (out / report).is_file(), report
    items = read_manifest(out / "items.csv")
    assert len(items) == 12 + 12 and {row.split for row in items} == {"test"}


def test_a_class_only_one_model_knows_is_reported_not_compared(models, tmp_path):
    result = compare(_config(models, tmp_path), models["good"], models["partial"])
    assert result.only == {"old": CLASSES[:2], "new": ["Swietenia_macrophylla"]}
    assert result.left_out == {"old": 8, "new": 0}  # the frozen split has no Swietenia
    assert result.images == 4  # Tectona's test images: the one class both know
    classes = {name for name in result.figures["old"] if name.startswith("class_recall.")}
    assert classes == {"class_recall.Tectona_grandis"}
    assert any("only OLD knows" in note for note in result.notes)
    assert any("only NEW knows" in note for note in result.notes)


def test_a_one_image_change_on_a_small_class_is_not_a_regression():
    tolerances = resolve_tolerances(settings().compare)
    old = {"class_recall.small": 1.0, "class_recall.large": 1.0, "top1": 0.9}
    counts = {"class_recall.small": 4, "class_recall.large": 100, "top1": 104}
    for floor, expected in ((1, {"class_recall.large"}), (0, set(old) - {"top1"})):
        judged = count_floored(tolerances, old, counts, floor)
        new = {"class_recall.small": 0.75, "class_recall.large": 0.94, "top1": 0.9}
        failed = {row.figure for row in judge(old, new, judged).failures}
        assert failed == expected, floor
    judged = count_floored(tolerances, old, counts, 1)
    two_images = {"class_recall.small": 0.5, "class_recall.large": 1.0, "top1": 0.9}
    assert {row.figure for row in judge(old, two_images, judged).failures} == {"class_recall.small"}


def test_speed_is_judged_as_a_ratio():
    tolerances = resolve_tolerances(settings().compare)
    old = {"images_per_s": 100.0}
    judged = count_floored(tolerances, old, {}, 1)
    assert judge(old, {"images_per_s": 85.0}, judged).ok
    slower = judge(old, {"images_per_s": 70.0}, judged)
    assert [row.message for row in slower.failures] == ["images_per_s 70 < 0.8 x baseline 100 = 80"]
    looser = resolve_tolerances(settings("compare.tolerances.images_per_s.min_ratio=0.5").compare)
    assert judge(old, {"images_per_s": 70.0}, count_floored(looser, old, {}, 1)).ok


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing model", "model not found"),
        ("disjoint classes", "share no class"),
        ("missing manifest", "manifest not found"),
        ("no manifest", "give --manifest"),
        ("known species as unknown", "unknown folders hold species neither model knows"),
        ("tolerance typo", "did you mean 'top1'"),
        ("bad rule", "unknown rule 'max_dorp'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, case, expected):
    old, new = models["good"], models["worse"]
    arguments = ["--data", str(models["data"]), "--manifest", str(models["frozen"])]
    if case == "missing model":
        new = tmp_path / "nothing.onnx"
    elif case == "disjoint classes":
        new = models["disjoint"]
    elif case == "missing manifest":
        arguments[3] = str(tmp_path / "frozen.csv")
    elif case == "no manifest":
        arguments = arguments[:2]
    elif case == "known species as unknown":
        arguments += ["--unknown", str(models["data"])]
    elif case == "tolerance typo":
        arguments += ["--set", "compare.tolerances.top_1.max_drop=0.1"]
    elif case == "bad rule":
        arguments += ["--set", "compare.tolerances.top1.max_dorp=0.1"]
    done = CliRunner().invoke(
        app, ["compare", str(old), str(new), *arguments, "--out", str(tmp_path / "out")]
    )
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert not (tmp_path / "out" / "compare.json").exists()


def test_bench_puts_the_release_gate_in_its_verdict(models, tmp_path):
    recipe = {
        "model": {"name": "test_resnet", "img_size": 32},
        "train": {"epochs": 3, "batch_size": 8, "workers": 0, "lr": 0.01, "quiet": True},
        "data": {"min_images_per_class": 2, "manifest": str(models["mislabelled"])},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    suite = {
        "name": "gate",
        "data": [
            {
                "name": "synth",
                "root": str(models["data"]),
                "recipe": "recipe.yaml",
                "compare_with": str(models["good"]),
                "set": FAST,
            }
        ],  # fmt: skip
        "int8": False,
        "speed": None,
        "baseline": str(tmp_path / "baseline.json"),
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = bench(settings(out=tmp_path / "out"), path)
    assert not result.comparison.ok
    failed = {row.figure for row in result.comparison.failures}
    assert f"synth.compare.class_recall.{SPOILED}" in failed
    assert all(figure.startswith("synth.compare.") for figure in failed)
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert f"synth.compare.class_recall.{SPOILED}" in markdown and "**FAIL**" in markdown

    # A compare_with that is not there: said so, and that part skipped.
    absent = BenchData.model_validate(suite["data"][0] | {"compare_with": str(tmp_path / "no")})
    notes: list[str] = []
    assert release_gate(settings(), absent, models["good"], notes) is None
    assert notes == [f"synth: compare_with {tmp_path / 'no'} not found; release gate skipped"]
