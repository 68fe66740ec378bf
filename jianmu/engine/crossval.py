"""k-fold cross-validation: grouped, stratified folds; one training run per fold.

Fold ``i`` is the test set of run ``i``; the other folds are split again into train and val (same
grouping, so no specimen or near-duplicate group straddles two splits). A fold that already has
test metrics is reused and one with a checkpoint is resumed, so an interrupted cross-validation
continues where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jianmu.config import Config, save_config
from jianmu.data.audit import scan_images
from jianmu.data.samples import find_samples, relative_posix
from jianmu.data.split import ManifestRow, split_samples, write_manifest
from jianmu.engine.splits import data_root
from jianmu.engine.train import TrainReporter, train
from jianmu.errors import JianmuError
from jianmu.files import atomic_write
from jianmu.rundir import ExperimentDir, fold_name


@dataclass
class FoldResult:
    fold: int
    run_dir: Path
    images: dict[str, int]
    best_epoch: int
    epochs_run: int
    test_metrics: dict[str, float]
    wall_seconds: float
    reused: bool = False


@dataclass
class CrossValResult:
    out: Path
    folds: list[FoldResult] = field(default_factory=list)
    wall_seconds: float = 0.0

    def mean(self, key: str) -> float:
        return statistics.fmean(fold.test_metrics[key] for fold in self.folds)

    def std(self, key: str) -> float:
        values = [fold.test_metrics[key] for fold in self.folds]
        return statistics.pstdev(values) if len(values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        keys = ("test_top1", "test_top5", "test_macro_f1", "test_loss")
        return {
            "folds": [
                {
                    "fold": f.fold,
                    "run_dir": str(f.run_dir),
                    "images": f.images,
                    "best_epoch": f.best_epoch,
                    "epochs_run": f.epochs_run,
                    "wall_seconds": round(f.wall_seconds, 1),
                    **f.test_metrics,
                }
                for f in self.folds
            ],
            "mean": {key: self.mean(key) for key in keys},
            "std": {key: self.std(key) for key in keys},
            "wall_seconds": round(self.wall_seconds, 1),
        }


def make_folds(config: Config, folds: int) -> list[list[ManifestRow]]:
    """Manifest rows (train/val/test) for each of ``folds`` grouped, stratified folds."""
    if folds < 2:
        raise JianmuError(f"--folds must be at least 2, got {folds}")
    root = data_root(config)
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    records = scan_images([s.path for s in samples], config.data)
    names = [fold_name(i + 1) for i in range(folds)]
    assigned = split_samples(
        samples, records, config.data, config.seed, root, fractions=dict.fromkeys(names, 1 / folds)
    ).rows
    fold_of = {row.path: row.split for row in assigned}
    val_share = min(0.5, config.data.val_fraction / (1 - 1 / folds))
    result = []
    for name in names:
        rest = [
            (sample, record)
            for sample, record in zip(samples, records, strict=True)
            if fold_of.get(_relative(sample.path, root)) not in (name, None)
        ]
        inner = split_samples(
            [s for s, _ in rest], [r for _, r in rest], config.data, config.seed, root,
            fractions={"train": 1 - val_share, "val": val_share},
        ).rows  # fmt: skip
        test = [_with_split(row, "test") for row in assigned if row.split == name]
        result.append(inner + test)
    return result


def cross_validate(
    config: Config, folds: int, reporter: TrainReporter | None = None
) -> CrossValResult:
    """Train one model per fold and collect each fold's test metrics."""
    started = time.perf_counter()
    folder = ExperimentDir(config.out or Path("runs") / time.strftime("cv-%Y%m%d-%H%M%S"))
    folder.path.mkdir(parents=True, exist_ok=True)
    save_config(config.model_copy(update={"out": folder.path}), folder.config)
    result = CrossValResult(folder.path)
    for index, rows in enumerate(make_folds(config, folds), start=1):
        run = folder.run(fold_name(index))
        manifest = write_manifest(folder.manifest(fold_name(index)), rows)
        images = {
            split: sum(row.split == split for row in rows) for split in ("train", "val", "test")
        }
        if reporter is not None and hasattr(reporter, "prefix"):
            reporter.prefix = f"fold {index}/{folds} "
        fold_started = time.perf_counter()
        if run.is_finished():
            done = json.loads(run.summary.read_text())
            fold = FoldResult(
                index, run.path, images, done["best_epoch"], done["epochs_run"],
                json.loads(run.test_metrics.read_text()), done["wall_seconds"], reused=True,
            )  # fmt: skip
        else:
            fold_config = config.model_copy(
                update={
                    "out": run.path,
                    "data": config.data.model_copy(update={"manifest": manifest}),
                }
            )
            resume = run.path if run.can_resume() else None
            trained = train(fold_config, resume=resume, reporter=reporter)
            fold = FoldResult(
                index, run.path, images, trained.best_epoch, len(trained.history),
                trained.test_metrics or {}, time.perf_counter() - fold_started,
            )  # fmt: skip
            keys = ("best_epoch", "epochs_run", "wall_seconds")
            summary = json.dumps({key: getattr(fold, key) for key in keys})
            atomic_write(run.summary, lambda tmp, text=summary: tmp.write_text(text))
        result.folds.append(fold)
    result.wall_seconds = time.perf_counter() - started
    text = json.dumps(result.to_dict(), indent=2)
    atomic_write(folder.crossval, lambda tmp: tmp.write_text(text))
    return result


def _with_split(row: ManifestRow, split: str) -> ManifestRow:
    return ManifestRow(row.path, row.label, row.specimen, split, row.sha256)


def _relative(path: Path, root: Path) -> str:
    return relative_posix(path, root.expanduser().absolute())
