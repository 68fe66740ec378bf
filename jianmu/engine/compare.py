"""``jianmu compare OLD NEW``: the release gate. Both models on the same frozen split, side by side;
every figure of NEW that regressed beyond its tolerance, named.

:func:`compare` evaluates both models with :func:`jianmu.engine.evaluate.evaluate` on exactly the
same images: the split's images of the classes both models know, plus the images of species
neither knows (the split's own and the ``unknown`` folders'), which measure unknown rejection. A
class only one model knows is reported, not compared: its images are left out for both, so that
every figure is measured on the same images. Speed is images/s through the one runner
(:meth:`jianmu.bundle.ModelBundle.run`), timed for both in the same process in alternating rounds.
The figures are judged by :func:`jianmu.engine.baseline.compare` (NEW as the run, OLD as its
baseline) under ``compare.tolerances``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jianmu.bundle import ModelBundle, load_model
from jianmu.config import CompareConfig, Config
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import ManifestRow, read_manifest, write_manifest
from jianmu.engine.baseline import Comparison, Tolerance, build_tolerances
from jianmu.engine.baseline import compare as judge_figures
from jianmu.engine.evaluate import EvalResult, evaluate, resolve_views
from jianmu.engine.splits import data_root
from jianmu.errors import JianmuError
from jianmu.record import file_sha256, model_sha256
from jianmu.report.compare_report import ITEMS_CSV, NEW_REPORT, OLD_REPORT, write_compare_report
from jianmu.verdict import RANKS, UNKNOWN_RANK

DEFAULT_OUT = Path("runs") / "compare"
SIDES = ("old", "new")


@dataclass
class CompareResult:
    """What ``jianmu compare`` measured and judged;
    :func:`jianmu.report.compare_report.write_compare_report` turns it into files."""

    models: dict[str, dict[str, Any]]
    """Per side (``old``, ``new``): path, format, SHA-256, classes, views."""
    data: str
    manifest: str
    split: str
    figures: dict[str, dict[str, float]]
    """Per side: figure name -> value (``top1``, ..., ``class_recall.<class>``)."""
    counts: dict[str, int]
    """Figure name -> the images (specimens) a share is measured on."""
    tolerances: dict[str, Tolerance]
    """Figure name -> the rules it was judged by (the count floor applied)."""
    comparison: Comparison
    images: int
    """Known images evaluated (of the classes both models know)."""
    unknown_images: int
    """Images of species neither model knows."""
    only: dict[str, list[str]]
    """Per side: the classes only that model knows (reported, not compared)."""
    left_out: dict[str, int]
    """Per side: split images left out because only that model knows their class."""
    speed: dict[str, Any]
    evaluations: dict[str, EvalResult]
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No figure regressed and none went missing: the exit code's 0."""
        return self.comparison.ok

    @property
    def regressions(self) -> list[str]:
        """One line per failed figure, e.g. ``class_recall.X 0.6 < baseline 0.95 - 0.05 = 0.9``."""
        return [row.message for row in self.comparison.failures]


def compare(
    config: Config,
    old_model: str | Path | ModelBundle,
    new_model: str | Path | ModelBundle,
    unknown: Sequence[str | Path] = (),
) -> CompareResult:
    """Evaluate ``old_model`` and ``new_model`` on the ``eval.split`` of ``data.manifest`` (under
    ``data.root``) and the ``unknown`` folders (class folders of species neither model knows);
    judge NEW against OLD with ``compare.tolerances``; write both evaluation reports,
    ``compare.json`` and ``compare.md`` to ``out`` (default ``runs/compare``).

    Raises:
        JianmuError: no manifest, a missing model, models without a class in common, a split
            without images of those classes, or an unknown folder holding a class a model knows.
    """
    tolerances = resolve_tolerances(config.compare)
    if config.data.manifest is None:
        raise JianmuError("compare needs the frozen split: give --manifest FROZEN.csv")
    root, split = data_root(config), config.eval.split
    rows = read_manifest(config.data.manifest, root=root)
    bundles = dict(zip(SIDES, _load(old_model, new_model), strict=True))
    classes = {side: set(bundle.classes) for side, bundle in bundles.items()}
    shared = classes["old"] & classes["new"]
    if not shared:
        raise JianmuError(
            f"OLD ({_names(classes['old'])}) and NEW ({_names(classes['new'])}) share no class: "
            "nothing to compare"
        )
    in_split = [row for row in rows if row.split == split]
    known = classes["old"] | classes["new"]
    # Shared classes are compared; species neither model knows measure unknown rejection.
    kept = [row for row in in_split if row.label in shared or row.label not in known]
    if not any(row.label in shared for row in kept):
        raise JianmuError(
            f"{config.data.manifest}: no {split!r} images of the {len(shared)} classes both "
            "models know"
        )
    kept += _unknown_rows(unknown, config, split, classes)
    out = Path(config.out) if config.out is not None else DEFAULT_OUT
    items = write_manifest(out / ITEMS_CSV, kept)
    evaluations = {
        side: evaluate(
            config.updated(out=out / name, data__manifest=items, eval__split=split), bundle
        )
        for (side, bundle), name in zip(bundles.items(), (OLD_REPORT, NEW_REPORT), strict=True)
    }
    speed = measure_speed(config, bundles, [(root / row.path, 0) for row in kept])
    measured = {side: measured_figures(evaluations[side], speed[side]) for side in SIDES}
    figures = {side: measured[side][0] for side in SIDES}
    counts = measured["old"][1]
    judged = count_floored(tolerances, figures["old"], counts, config.compare.count_floor)
    result = CompareResult(
        models={side: _describe(bundle, config) for side, bundle in bundles.items()},
        data=str(root),
        manifest=str(config.data.manifest),
        split=split,
        figures=figures,
        counts=counts,
        tolerances=judged,
        comparison=judge(figures["old"], figures["new"], judged),
        images=evaluations["new"].metrics["count"],
        unknown_images=sum(row.label not in known for row in kept),
        only={side: sorted(classes[side] - shared, key=natural_key) for side in SIDES},
        left_out={
            side: sum(row.label in classes[side] - shared for row in in_split) for side in SIDES
        },
        speed=speed,
        evaluations=evaluations,
    )
    result.notes = _notes(result, evaluations)
    result.files = write_compare_report(result, out)
    return result


def resolve_tolerances(config: CompareConfig) -> dict[str, Tolerance]:
    """``compare.tolerances`` as validated rules, without the figures set to null."""
    raw = config.tolerances.model_dump()
    rules = {name: value for name, value in raw.items() if value is not None}
    return build_tolerances(rules, source="compare.tolerances")


def measured_figures(evaluation: EvalResult, speed: float) -> tuple[dict[str, float], dict]:
    """The compared figures of one evaluation, and the images (specimens) each share counts."""
    report, open_set = evaluation.metrics, evaluation.open_set or {}
    figures = {"top1": report["top1"], "macro_f1": report["macro_f1"], "ece": report["ece_after"]}
    counts = {"top1": report["count"]}
    if evaluation.specimen_metrics:
        figures["specimen_top1"] = evaluation.specimen_metrics["top1"]
        counts["specimen_top1"] = evaluation.specimen_metrics["count"]
    if open_set.get("ranks"):
        # Rejected: answered "unknown", or at a genus/family that is right (the rule).
        figures["unknown_rejection"] = 1.0 - open_set["ranks"]["wrong"]
        counts["unknown_rejection"] = open_set["ranks"]["count"]
    if "known_flagged_unknown" in open_set:
        figures["known_flagged_unknown"] = open_set["known_flagged_unknown"]
        counts["known_flagged_unknown"] = report["count"]
    ranks = report.get("ranks") or {}
    for key in (*RANKS, UNKNOWN_RANK, "wrong", "deepest_right"):
        if key in ranks:
            figures[f"ranks_{key}"] = ranks[key]
            counts[f"ranks_{key}"] = ranks["count"]
    figures["images_per_s"] = speed
    for row in report["per_class"]:
        if row["support"]:
            figures[f"class_recall.{row['class']}"] = row["recall"]
            counts[f"class_recall.{row['class']}"] = row["support"]
    return figures, counts


def count_floored(
    tolerances: Mapping[str, Tolerance], figures: Mapping[str, float], counts, floor: int
) -> dict[str, Tolerance]:
    """The rules of each figure OLD has (``class_recall`` for every ``class_recall.<class>``),
    with ``max_drop``/``max_rise`` at least ``floor / count`` for a share of ``count`` items."""
    judged = {}
    for figure in figures:
        tolerance = tolerances.get(figure.partition(".")[0])
        if tolerance is None:
            continue
        count = counts.get(figure)
        if floor and count:
            step = floor / count
            update = {
                rule: max(getattr(tolerance, rule), step)
                for rule in ("max_drop", "max_rise")
                if getattr(tolerance, rule) is not None
            }
            tolerance = tolerance.model_copy(update=update)
        judged[figure] = tolerance
    return judged


def judge(
    old: Mapping[str, float],
    new: Mapping[str, float],
    tolerances: Mapping[str, Tolerance],
    prefix: str = "",
) -> Comparison:
    """NEW's figures judged against OLD's; ``prefix`` goes before every figure name (bench)."""

    def named(figures: Mapping[str, Any]) -> dict[str, Any]:
        return {f"{prefix}{name}": value for name, value in figures.items()}

    return judge_figures(named(new), named(old), named(tolerances))


def measure_speed(
    config: Config, bundles: Mapping[str, ModelBundle], items: list[tuple[Path, int]]
) -> dict[str, Any]:
    """Images/s of each model through :meth:`ModelBundle.run` on the same ``compare.speed_images``
    of ``items`` (repeated when fewer), as predict runs them (``predict.tta``, batch size,
    workers), after their evaluation warmed them up. Runs alternate between the models (at least
    ``compare.speed_rounds`` each, until each has run ``compare.speed_seconds``) and each model's
    fastest run counts: a busy machine only ever slows a run down."""
    settings = config.compare
    repeats = -(-settings.speed_images // len(items))  # a small split: its images again
    sample = (items * repeats)[: settings.speed_images]
    views = {side: _speed_views(config, bundle) for side, bundle in bundles.items()}

    def seconds(side: str, bundle: ModelBundle) -> float:
        started = time.perf_counter()
        bundle.run(
            sample, views[side], config.predict.batch_size, config.predict.workers,
            read_timeout=config.data.read_timeout,
        )  # fmt: skip
        return time.perf_counter() - started

    times: dict[str, list[float]] = {side: [] for side in bundles}
    while any(
        len(spent) < settings.speed_rounds or sum(spent) < settings.speed_seconds
        for spent in times.values()
    ):
        for side, bundle in bundles.items():
            times[side].append(seconds(side, bundle))
    best = {side: len(sample) / min(spent) for side, spent in times.items()}
    runs = min(len(spent) for spent in times.values())
    return best | {"images": len(sample), "runs": runs, "views": views}


def _speed_views(config: Config, bundle: ModelBundle) -> int:
    return bundle.tta_views if config.predict.tta else 1


def _load(*models: str | Path | ModelBundle) -> list[ModelBundle]:
    return [model if isinstance(model, ModelBundle) else load_model(model) for model in models]


def _unknown_rows(
    folders: Sequence[str | Path], config: Config, split: str, classes: Mapping[str, set[str]]
) -> list[ManifestRow]:
    """Manifest rows (absolute paths) of the images in ``folders``' class folders."""
    rows = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise JianmuError(f"--unknown {folder}: not a folder")
        samples = find_samples(folder, config.data.extensions, config.data.specimen_pattern)
        if not samples:
            raise JianmuError(f"--unknown {folder}: no images in class folders <species>/")
        for sample in samples:
            for side, names in classes.items():
                if sample.label in names:
                    raise JianmuError(
                        f"--unknown {folder}: {side.upper()} knows {sample.label!r}; unknown "
                        "folders hold species neither model knows"
                    )
            path = sample.path.absolute()
            try:
                sha256 = file_sha256(path)
            except OSError:
                sha256 = ""  # unreadable: the evaluation lists it with its reason
            rows.append(ManifestRow(path.as_posix(), sample.label, sample.specimen, split, sha256))
    return rows


def _describe(bundle: ModelBundle, config: Config) -> dict[str, Any]:
    return {
        "path": str(bundle.path),
        "format": bundle.kind,
        "sha256": model_sha256(bundle.path),
        "classes": bundle.classes,
        "views": resolve_views(config, bundle),
    }


def _notes(result: CompareResult, evaluations: Mapping[str, EvalResult]) -> list[str]:
    notes = []
    for side in SIDES:
        if result.only[side]:
            notes.append(
                f"only {side.upper()} knows {_names(result.only[side])}: reported, not compared "
                f"({result.left_out[side]} {result.split} images left out for both)"
            )
        unreadable = len(evaluations[side].unreadable)
        if unreadable:
            notes.append(f"{side.upper()}: {unreadable} images could not be read")
    views = {side: result.models[side]["views"] for side in SIDES}
    if views["old"] != views["new"]:
        notes.append(
            f"evaluated with the views each model was calibrated for: OLD {views['old']}, "
            f"NEW {views['new']}"
        )
    return notes


def _names(classes: Sequence[str] | set[str], limit: int = 5) -> str:
    names = sorted(classes, key=natural_key)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
