"""Run tracking: a training run also logged to TensorBoard and/or MLflow (``train.loggers``), so
a lab can lay runs side by side over months.

The run folder stays the record; a tracker holds a copy for comparing. Hence:

- a missing library fails in one line before anything is written (:func:`check_loggers`), and a
  store that cannot be opened fails in one line before the first epoch (:func:`open_trackers`);
- a tracker that fails once training runs is dropped with a warning (``TrainResult.warnings``)
  and training goes on: losing a chart must never lose the run.

TensorBoard writes ``<run>/tensorboard/``. MLflow gets the resolved config as params (flattened,
``train.lr``), every epoch's figures with the epoch as step, the test figures at the best epoch,
and the run folder's files except the weights and the resume state (those stay in the run folder,
named by the ``jianmu.run_dir`` tag). Its default store is ``sqlite:///<parent>/mlflow.db`` beside
the run folder, with the files in ``<parent>/mlartifacts/``: the runs of one folder share it.
The libraries are imported only when a run asks for them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

import jianmu
from jianmu.config import Config, read_yaml
from jianmu.errors import JianmuError
from jianmu.rundir import RunDir

EXTRA = "pip install 'jianmu[tracking]'"
# The module each logger needs; importing it is the check that the library is there.
MODULES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow.tracking"}
MLFLOW_STORE = "mlflow.db"
MLFLOW_ARTEFACTS = "mlartifacts"
RUN_DIR_TAG = "jianmu.run_dir"


class Tracker(Protocol):
    name: str

    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def log_end(self, run: RunDir, figures: dict[str, float], step: int) -> None: ...
    def close(self, status: str) -> None: ...


def check_loggers(names: list[str]) -> None:
    """Import what ``train.loggers`` needs; a missing library is one line naming the extra."""
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(MODULES[name])
        except ImportError as error:
            raise JianmuError(
                f"train.loggers: {name} cannot be imported ({_one_line(error)}); install it "
                f"with {EXTRA}"
            ) from None


class Trackers:
    """The run's trackers behind one object (with none, every call does nothing). A tracker
    that raises is closed, dropped and named in :attr:`warnings`; the others go on."""

    def __init__(self, trackers: list[Tracker] | None = None) -> None:
        self.trackers = list(trackers or [])
        self.warnings: list[str] = []
        self._epoch = 0

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._epoch = row["epoch"]
        self._each(lambda tracker: tracker.log_epoch(row))

    def log_end(self, run: RunDir, figures: dict[str, float], step: int) -> None:
        """The test figures at ``step`` (the best epoch) and the run folder's files."""
        self._each(lambda tracker: tracker.log_end(run, figures, step))

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        status = "FINISHED" if kind is None else "FAILED"
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            status = "KILLED"
        self._each(lambda tracker: tracker.close(status), closing=True)
        self.trackers = []

    def _each(self, call, closing: bool = False) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            # Any failure of a tracker (store locked, disk full, server gone) only costs the copy.
            except Exception as error:  # noqa: BLE001
                self.trackers.remove(tracker)
                when = "closing" if closing else f"epoch {self._epoch}"
                self.warnings.append(
                    f"{tracker.name} logging stopped at {when} ({_one_line(error)}); the run "
                    "folder holds every figure"
                )
                if not closing:
                    _close_quietly(tracker)


def open_trackers(config: Config, run: RunDir, resume: bool = False) -> Trackers:
    """Open the trackers ``config.train.loggers`` names for ``run`` (a resumed run continues its
    MLflow run); any that cannot be opened is one JianmuError, before training starts."""
    opened = Trackers()
    try:
        for name in dict.fromkeys(config.train.loggers):
            opened.trackers.append(OPENERS[name](config, run, resume))
    except BaseException:
        for tracker in opened.trackers:
            _close_quietly(tracker)
        raise
    return opened


# --- TensorBoard ---------------------------------------------------------------------------------


class TensorBoardTracker:
    """Scalars per epoch in ``<run>/tensorboard/``, under the names of ``metrics.csv``."""

    name = "tensorboard"

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, config: Config, run: RunDir, resume: bool = False) -> TensorBoardTracker:
        from torch.utils.tensorboard import SummaryWriter

        try:
            writer = SummaryWriter(log_dir=str(run.tensorboard))
        except OSError as error:
            raise JianmuError(f"{run.tensorboard}: cannot write ({_one_line(error)})") from None
        # Indented: TensorBoard shows text as Markdown, and this keeps the YAML as it is.
        text = run.config.read_text(encoding="utf-8")
        writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        return cls(writer)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, value in _figures(row).items():
            self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()  # a live `tensorboard --logdir` sees each epoch as it ends

    def log_end(self, run: RunDir, figures: dict[str, float], step: int) -> None:
        for key, value in figures.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


# --- MLflow --------------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run per run folder: params, metrics per epoch, the folder's files."""

    name = "mlflow"

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, config: Config, run: RunDir, resume: bool = False) -> MlflowTracker:
        # jianmu runs offline at inspection labs: no usage reports unless the user asks for them.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        uri = config.train.mlflow_uri or default_mlflow_uri(run)
        name = config.train.mlflow_experiment or f"jianmu-{config.data.domain}"
        params = flatten_config(read_yaml(run.config))
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, name, uri)
            run_id = _run_of(client, experiment_id, run) if resume else None
            if run_id is None:
                tags = {RUN_DIR_TAG: str(run.path.resolve()), "jianmu.version": jianmu.__version__}
                run_id = client.create_run(
                    experiment_id, run_name=run.path.name, tags=tags
                ).info.run_id
            else:
                client.update_run(run_id, status="RUNNING")  # it ended KILLED or FAILED
            client.log_batch(
                run_id, params=[Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
            )
        except Exception as error:  # noqa: BLE001 - MLflow raises many kinds for a bad store
            raise JianmuError(f"MLflow store {uri}: {_one_line(error)}") from None
        return cls(client, run_id)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._log_metrics(_figures(row), row["epoch"])

    def log_end(self, run: RunDir, figures: dict[str, float], step: int) -> None:
        self._log_metrics(figures, step)
        for path in artefacts(run):
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def _log_metrics(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in figures.items()]
        self.client.log_batch(self.run_id, metrics=metrics)


def default_mlflow_uri(run: RunDir) -> str:
    """``sqlite:///`` + the store beside the run folder, shared by the runs of its parent."""
    return "sqlite:///" + (run.path.resolve().parent / MLFLOW_STORE).as_posix()


def artefacts(run: RunDir) -> list[Path]:
    """The run folder's files an MLflow run carries: all but the weights and the resume state
    (they stay in the run folder, which the ``jianmu.run_dir`` tag names)."""
    heavy = {run.best, run.last, run.state}
    return sorted(
        path
        for path in run.path.iterdir()
        if path.is_file() and path not in heavy and not path.name.startswith(".")
    )


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": "0.01"}``: strings as they are, other values
    as JSON (``true``, ``null``, ``[0.35, 1.0]``); an empty mapping stays one ``{}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artefact_root(uri))
    except Exception:  # noqa: BLE001 - another run made it meanwhile: use that one
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _artefact_root(uri: str) -> str | None:
    """Files beside a local SQLite store (MLflow's own default is ./mlruns under the current
    folder, wherever that is); other stores choose their own."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / MLFLOW_ARTEFACTS).as_uri()


def _run_of(client: Any, experiment_id: str, run: RunDir) -> str | None:
    """The MLflow run a resumed run folder was logged to, found by its tag."""
    path = str(run.path.resolve())
    if "'" in path:  # cannot be quoted in a search filter: a new MLflow run instead
        return None
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{path}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _figures(row: dict[str, Any]) -> dict[str, float]:
    """An epoch row's numbers (the epoch itself is the step; ``weights`` is a word)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _close_quietly(tracker: Tracker) -> None:
    with contextlib.suppress(Exception):  # already failing: the first error is the one reported
        tracker.close("FAILED")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


OPENERS = {"tensorboard": TensorBoardTracker.open, "mlflow": MlflowTracker.open}
