"""Run tracking (train.loggers) against the real TensorBoard and MLflow: tiny trainings on
generated data, read back with each library's own reader."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import tiny_config
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.config import save_config
from jianmu.data.synth import generate_dataset
from jianmu.engine.train import train
from jianmu.errors import JianmuError

LOGGERS = "train.loggers=[tensorboard, mlflow]"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracking") / "data"
    generate_dataset(root, "wood", classes=3, per_class=8, size=48, specimens_per_class=4, seed=1)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The folder holding the tracked runs, and so their MLflow store."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def tracked(toy_data, runs):
    return train(tiny_config(toy_data, runs / "tracked", "train.epochs=2", LOGGERS))


def client_of(runs: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")


def mlflow_run(runs: Path, run_dir: Path):
    """The one MLflow run of ``run_dir`` (found by the tag every jianmu run carries)."""
    client = client_of(runs)
    experiment = client.get_experiment_by_name("jianmu-wood")
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`jianmu.run_dir` = '{run_dir}'"
    )
    assert len(found) == 1
    return client, found[0]


def numeric_keys(history: list[dict]) -> set[str]:
    return {
        key
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def scalars(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events


def leaves(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_tensorboard_holds_every_epoch_of_the_history(tracked):
    events = scalars(tracked.run_dir / "tensorboard")
    keys = numeric_keys(tracked.history)
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_macro_f1"} <= keys
    assert "images_per_s" in keys and "lr" in keys
    assert keys <= set(events.Tags()["scalars"])
    for key in keys:
        logged = [(event.step, event.value) for event in events.Scalars(key)]
        assert [step for step, _ in logged] == [row["epoch"] for row in tracked.history]
        assert [value for _, value in logged] == pytest.approx(
            [row[key] for row in tracked.history], rel=1e-6
        )
    (test_top1,) = events.Scalars("test_top1")
    assert test_top1.step == tracked.best_epoch
    assert test_top1.value == pytest.approx(tracked.test_metrics["test_top1"], rel=1e-6)
    (config,) = events.Tensors("config/text_summary")  # the resolved config, as text
    text = config.tensor_proto.string_val[0].decode()
    assert textwrap.dedent(text) == (tracked.run_dir / "config.yaml").read_text().rstrip("\n")


def test_mlflow_run_has_the_config_the_epochs_and_the_files(tracked, runs, tmp_path):
    client, logged = mlflow_run(runs, tracked.run_dir)
    assert logged.info.run_name == "tracked" and logged.info.status == "FINISHED"
    resolved = yaml.safe_load((tracked.run_dir / "config.yaml").read_text())
    params = logged.data.params
    assert set(params) == set(leaves(resolved)) and len(params) > 100
    assert params["train.epochs"] == "2" and params["model.name"] == "test_resnet"
    assert params["out"] == str(tracked.run_dir) and params["train.grad_clip"] == "null"
    assert params["train.loggers"] == '["tensorboard", "mlflow"]'
    assert params["augment.scale"] == "[0.35, 1.0]" and params["data.families"] == "{}"
    for key in numeric_keys(tracked.history):
        history = client.get_metric_history(logged.info.run_id, key)
        assert [m.step for m in history] == [row["epoch"] for row in tracked.history]
        assert [m.value for m in history] == pytest.approx([row[key] for row in tracked.history])
    for key, value in tracked.test_metrics.items():
        (metric,) = client.get_metric_history(logged.info.run_id, key)
        assert metric.step == tracked.best_epoch and metric.value == pytest.approx(value)
    assert logged.data.metrics["best_epoch"] == tracked.best_epoch
    names = {entry.path for entry in client.list_artifacts(logged.info.run_id)}
    assert names == {
        "config.yaml",
        "manifest.csv",
        "metrics.csv",
        "curves.png",
        "test_metrics.json",
    }
    # The files sit beside the store, not under whatever folder training was started from.
    assert logged.info.artifact_uri.startswith((runs / "mlartifacts").as_uri())
    copy = Path(client.download_artifacts(logged.info.run_id, "metrics.csv", str(tmp_path)))
    assert copy.read_text() == (tracked.run_dir / "metrics.csv").read_text()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # no usage reports from a lab's PC


def test_a_store_that_cannot_be_opened_is_one_line_before_the_first_epoch(toy_data, tmp_path):
    config = tiny_config(toy_data, tmp_path / "run", "train.loggers=[mlflow]")
    with pytest.raises(JianmuError) as error:
        train(config.updated(["train.mlflow_uri=nosuch://store"]))
    assert str(error.value).startswith("MLflow store nosuch://store: ")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "best.safetensors").exists()


class Interrupt:
    """A reporter that stops training with Ctrl-C once the first epoch is saved."""

    def start_epoch(self, epoch, epochs, batches):
        pass

    def batch(self, loss, accuracy, images_per_second):
        pass

    def end_epoch(self, row):
        raise KeyboardInterrupt


def test_a_resumed_run_continues_its_mlflow_run(toy_data, runs):
    run_dir = runs / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(toy_data, run_dir, "train.epochs=2", LOGGERS), reporter=Interrupt())
    client, logged = mlflow_run(runs, run_dir)
    assert logged.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_loss")] == [1]
    result = train(tiny_config(toy_data, None), resume=run_dir)
    client, continued = mlflow_run(runs, run_dir)  # still one MLflow run for the folder
    assert continued.info.run_id == logged.info.run_id and continued.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [
        (row["epoch"], pytest.approx(row["val_loss"])) for row in result.history
    ]
    events = scalars(run_dir / "tensorboard")  # two event files, one per process
    assert [event.step for event in events.Scalars("val_loss")] == [1, 2]


def test_a_tracker_failing_mid_training_loses_nothing(toy_data, runs, monkeypatch):
    real = MlflowClient.log_batch

    def locked(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", locked)
    result = train(tiny_config(toy_data, runs / "locked", "train.epochs=2", LOGGERS))
    assert len(result.history) == 2 and result.best_checkpoint.is_file()
    assert (result.run_dir / "test_metrics.json").is_file()
    (warning,) = [w for w in result.warnings if "mlflow" in w]
    assert "mlflow logging stopped at epoch 1 (" in warning and "database is locked" in warning
    _, logged = mlflow_run(runs, result.run_dir)
    assert logged.info.status == "FAILED"  # the MLflow copy says it is incomplete
    # TensorBoard went on for both epochs.
    assert [e.step for e in scalars(result.run_dir / "tensorboard").Scalars("val_loss")] == [1, 2]


def test_without_loggers_nothing_extra_is_written(toy_data, tracked, tmp_path):
    result = train(tiny_config(toy_data, tmp_path / "plain", "train.epochs=2"))
    assert result.warnings == tracked.warnings
    plain = {path.name for path in result.run_dir.iterdir()}
    assert plain == {path.name for path in tracked.run_dir.iterdir()} - {"tensorboard"}
    assert [path.name for path in tmp_path.iterdir()] == ["plain"]  # no store beside the run


@pytest.mark.parametrize(
    ("logger", "hidden"),
    [("mlflow", ["mlflow", "mlflow.tracking"]), ("tensorboard", ["tensorboard"])],
)
def test_a_missing_library_is_one_line_before_training(
    toy_data, tmp_path, monkeypatch, logger, hidden
):
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(JianmuError) as error:
        train(tiny_config(toy_data, tmp_path / "run", f"train.loggers=[{logger}]"))
    message = str(error.value)
    assert message.startswith(f"train.loggers: {logger} cannot be imported") and "\n" not in message
    assert message.endswith("install it with pip install 'jianmu[tracking]'")
    assert not (tmp_path / "run").exists()  # nothing written, nothing to lose
    config = save_config(tiny_config(toy_data, None), tmp_path / "tiny.yaml")
    cli = CliRunner().invoke(
        app,
        ["train", str(config), "--out", str(tmp_path / "cli")]
        + ["--set", f"train.loggers=[{logger}]"],
    )
    assert cli.exit_code == 2 and not (tmp_path / "cli").exists()
    assert cli.output == f"error: {message}\n"  # the same one line, brackets and all


def test_an_unknown_logger_is_refused_with_the_known_ones(toy_data, tmp_path):
    with pytest.raises(JianmuError, match="train.loggers.0: Input should be 'tensorboard' or"):
        tiny_config(toy_data, tmp_path / "run", "train.loggers=[wandb]")
