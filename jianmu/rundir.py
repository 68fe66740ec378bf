"""The run-folder layout, named once: what ``jianmu train`` writes and what the other commands
find in it; and the folders of the experiments made of several runs (cross-validation,
leave-species-out). No other module spells these file names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLE_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}


def _file(name: str, about: str = "") -> property:
    """A file of the folder, by its one name."""
    return property(lambda self: self.path / name, doc=f"``{name}``{about}")


@dataclass(frozen=True)
class RunDir:
    """One training run; exported bundles go beside its checkpoints by default."""

    path: Path

    config = _file("config.yaml", ": the resolved config")
    manifest = _file("manifest.csv", ": the split used")
    metrics = _file("metrics.csv", ": a row per epoch")
    curves = _file("curves.png")
    best = _file("best.safetensors", ": the best checkpoint, calibrated")
    last = _file("last.safetensors", ": the last epoch's checkpoint")
    state = _file("last.state.pt", ": optimizer, scheduler, EMA and RNG state for --resume")
    test_metrics = _file("test_metrics.json", ": the best checkpoint on the test split")
    summary = _file("summary.json", ": a finished cross-validation fold's summary")
    tensorboard = _file("tensorboard", ": TensorBoard event files (train.loggers: [tensorboard])")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def shard(self, rank: int) -> Path:
        """The sample indices rank ``rank`` trained on in the first epoch (DDP sanity record)."""
        return self.path / f"shard_rank{rank}.json"

    def bundle(self, format: str, int8: bool = False) -> Path:
        return self.path / bundle_name("model", format, int8)

    def holds_run(self) -> bool:
        return self.state.exists() or self.best.exists()

    def can_resume(self) -> bool:
        return self.state.is_file()

    def is_finished(self) -> bool:
        return self.test_metrics.is_file()


def bundle_name(stem: str, format: str, int8: bool = False) -> str:
    return f"{stem}{'.int8' if int8 else ''}{BUNDLE_SUFFIXES[format]}"


def default_bundle_path(model: Path, format: str, int8: bool = False) -> Path:
    """Where an export of ``model`` (a run folder or a checkpoint file) goes by default."""
    model = Path(model)
    if model.is_dir():
        return RunDir(model).bundle(format, int8)
    return model.parent / bundle_name(model.stem, format, int8)


def checkpoint_file(model: Path) -> Path:
    """The checkpoint a run folder stands for (its best one), or the file itself."""
    model = Path(model)
    return RunDir(model).best if model.is_dir() else model


def run_folder(model: Path) -> Path:
    """The run folder of a run folder or of a checkpoint inside one."""
    model = Path(model)
    return model if model.is_dir() else model.parent


@dataclass(frozen=True)
class ExperimentDir:
    """A folder of runs, one per fold (``fold1/``, with its split ``fold1.csv``) or per held-out
    species (``without-<class>/``, ``without-<class>.csv``), with the experiment's table."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = _file("config.yaml", ": the experiment's resolved config")
    crossval = _file("crossval.json", ": every fold's test figures, mean and spread")
    openset = _file("openset.json", ": every rule on every held-out species")
    openset_table = _file("openset.md", ": the same as tables")
    rank_thresholds = _file(
        "rank-thresholds.json", ": rank thresholds fitted on the held-out species, in units"
    )

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def manifest(self, name: str) -> Path:
        return self.path / f"{name}.csv"


def fold_name(index: int) -> str:
    return f"fold{index}"


def held_out_name(label: str) -> str:
    return f"without-{label}"
