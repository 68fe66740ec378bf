"""The leave-species-out experiment: how well each unknown-species rule rejects a species the model
never saw. Each species is held out in turn: a model is trained on the others (a full run,
calibrated as usual), then every rule is fitted on its outputs (:mod:`jianmu.calibration.fit`,
the same fitting as after training) and scored on the known test images and on all images of the
held-out species. Trained runs are reused, so an interrupted experiment continues.

This is an experiment, not a step of training: nothing on the calibration path imports it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jianmu import metrics
from jianmu.bundle import load_model
from jianmu.calibration.apply import Calibrator
from jianmu.calibration.fit import (
    calibrate,
    fit_statistics,
    fit_temperature,
    threshold_for_recall,
)
from jianmu.calibration.scores import RULES, FeatureStatistics
from jianmu.config import Config
from jianmu.data.audit import scan_images
from jianmu.data.preprocess import DIHEDRAL_VIEWS
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import manifest_items, split_samples, write_manifest
from jianmu.engine.evaluate import rank_figures
from jianmu.engine.predict import Labels
from jianmu.engine.splits import data_root
from jianmu.engine.train import TrainReporter, train
from jianmu.errors import JianmuError, did_you_mean
from jianmu.files import write_text_atomic
from jianmu.rundir import ExperimentDir, held_out_name
from jianmu.taxonomy import class_hierarchy, lineage_of, load_taxonomy
from jianmu.verdict import (
    CANNOT_DECIDE,
    CONSISTENT,
    INCONSISTENT,
    RANKS,
    UNKNOWN_RANK,
    Lineages,
    declaration_decision,
    deepest_answer,
)

VIEWS = (1, DIHEDRAL_VIEWS)


@dataclass
class OpenSetResult:
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per held-out species and rule: AUROC, known recall, unknown rejection, balanced recall."""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    """Per held-out species and number of views: how the model's rank rule answered its photos
    and the known test photos, and how declarations fared."""
    wall_seconds: float = 0.0

    def mean(self, rule: str, key: str) -> float:
        return statistics.fmean(row[key] for row in self.rows if row["rule"] == rule)

    @property
    def rules(self) -> list[str]:
        return list(dict.fromkeys(row["rule"] for row in self.rows))

    @property
    def best_rule(self) -> str:
        return max(self.rules, key=lambda rule: self.mean(rule, "balanced_recall"))

    def to_dict(self) -> dict[str, Any]:
        keys = ("auroc", "known_recall", "unknown_rejection", "balanced_recall")
        return {
            "rows": self.rows,
            "mean": {rule: {k: self.mean(rule, k) for k in keys} for rule in self.rules},
            "best_rule": self.best_rule,
            "ranks": self.ranks,
            "ranks_mean": self.rank_means(),
            "wall_seconds": round(self.wall_seconds, 1),
        }

    def rank_means(self) -> dict[str, dict[str, float]]:
        """The rank figures averaged over the held-out species, per number of views."""
        means = {}
        for views in sorted({row["views"] for row in self.ranks}):
            rows = [row for row in self.ranks if row["views"] == views]
            means[str(views)] = {
                key: statistics.fmean(row[key] for row in rows)
                for key in RANK_KEYS
                if all(row.get(key) is not None for row in rows)
            }
        return means


def leave_species_out(
    config: Config,
    reporter: TrainReporter | None = None,
    views: tuple[int, ...] = VIEWS,
    held_out: list[str] | None = None,
) -> OpenSetResult:
    """Hold each species out in turn (or only the class folders ``held_out``): train on the
    others, score every rule (for each number of test-time ``views``) on known test images and on
    all images of the held-out species, and the rank rule's answers and declarations.

    Raises:
        JianmuError: no data, fewer than 3 species, or a ``held_out`` name that is no class folder.
    """
    started = time.perf_counter()
    root = data_root(config)
    folder = ExperimentDir(config.out or Path("runs") / time.strftime("openset-%Y%m%d-%H%M%S"))
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    records = scan_images([s.path for s in samples], config.data)
    rows = split_samples(samples, records, config.data, config.seed, root).rows
    classes = sorted({row.label for row in rows}, key=natural_key)
    if len(classes) < 3:
        raise JianmuError("the open-set protocol needs at least 3 species (2 stay known)")
    unknown_names = sorted(set(held_out or []) - set(classes))
    if unknown_names:
        raise JianmuError(
            f"--hold-out {unknown_names[0]!r} is no class folder of {root}"
            + did_you_mean(unknown_names[0], classes)
        )
    result = OpenSetResult(folder.path)
    for held in [name for name in classes if held_out is None or name in held_out]:
        run = folder.run(held_out_name(held))
        known_rows = [row for row in rows if row.label != held]
        if not run.is_finished():
            manifest = write_manifest(folder.manifest(held_out_name(held)), known_rows)
            data = config.data.model_copy(update={"manifest": manifest})
            resume = run.path if run.can_resume() else None
            if reporter is not None and hasattr(reporter, "prefix"):
                reporter.prefix = f"without {held} "
            train(config.model_copy(update={"out": run.path, "data": data}), resume, reporter)
        unknown = [(root / row.path, -1) for row in rows if row.label == held]
        scored, ranks = _score_held_out(run.best, known_rows, unknown, root, config, held, views)
        result.rows += scored
        result.ranks += ranks
        write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    result.wall_seconds = time.perf_counter() - started
    write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    write_text_atomic(folder.openset_table, open_set_markdown(result))
    return result


def _score_held_out(checkpoint, known_rows, unknown, root, config, held, views):
    """Every rule's figures, and the rank rule's answers and declarations, for one held-out run."""
    bundle = load_model(checkpoint)
    items = manifest_items(known_rows, root, bundle.classes)
    target = config.calibration.target_known_recall
    taxonomy = load_taxonomy(config.data.taxonomy or config.data.domain)
    if "hierarchy" not in bundle.meta:  # a run trained before ranks: its classes' lineage now
        bundle.meta["hierarchy"] = class_hierarchy(bundle.classes, taxonomy, config.data.families)
        bundle.calibrator = Calibrator(bundle.meta, bundle.statistics)
    calibrator = _rank_calibrator(bundle, items, config)
    truth = lineage_of(held, taxonomy, config.data.families)
    entry = taxonomy.match(held).entry
    held_flags = entry.flags if entry is not None else []
    rows, ranks = [], []
    for view_count in views:
        outputs = {
            split: bundle.run(split_items, view_count).readable()
            for split, split_items in {**items, "unknown": unknown}.items()
        }
        for rule, report in _rule_reports(outputs, target).items():
            name = rule if view_count == 1 else f"{rule}+tta{view_count}"
            rows.append({"held_out": held, "rule": name, **report})
        if calibrator.ranks.thresholds_for(view_count) is not None:
            figures = _rank_report(bundle, calibrator, outputs, view_count, truth, held_flags)
            ranks.append({"held_out": held, "views": view_count, **figures})
    return rows, ranks


def _rank_calibrator(bundle, items, config: Config) -> Calibrator:
    """The run's calibration with its rank thresholds, fitted now for a run trained before
    them (in memory: the run's checkpoint is left as it is)."""
    if bundle.meta.get("ranks"):
        return bundle.calibrator
    run = partial(bundle.run, batch_size=config.calibration.batch_size)
    hierarchy = bundle.calibrator.ranks.hierarchy
    fitted = calibrate(run, items, config.calibration, config.seed, hierarchy)
    meta = {**bundle.meta, **fitted.record}
    return Calibrator(meta, FeatureStatistics.from_arrays(fitted.statistics.to_arrays()))


def _rank_report(bundle, calibrator, outputs, views, truth, held_flags) -> dict[str, Any]:
    """How the rank rule answered the held-out species' photos and the known test photos, whether
    the held-out photos were flagged as regulated, and what became of declarations: every
    photo declared as what it is, and as each other species the model knows (and a known photo
    as the held-out species)."""
    lineages = Lineages(bundle.classes, calibrator.ranks.lineage)
    labels = Labels(bundle, 3, views)
    known, unseen = (calibrator.apply(outputs[s].logits, outputs[s].embeddings, views)
                     for s in ("test", "unknown"))  # fmt: skip
    known_truth = [lineages.of_class[bundle.classes[t]] for t in outputs["test"].targets]
    held = rank_figures(unseen, [truth.to_dict()] * len(unseen.rank), lineages)
    tested = rank_figures(known, known_truth, lineages)
    flags = [labels.answer(rank, taxon, "")["flags"] for rank, taxon in zip(
        unseen.rank, unseen.taxon, strict=True)]  # fmt: skip
    report = {
        "expected": deepest_answer(truth.to_dict(), lineages)[0],
        "held_right": held["deepest_right"],
        "held_wrong": held["wrong"],
        **{f"held_{rank}": held[rank] for rank in (*RANKS, UNKNOWN_RANK)},
        "held_regulated": bool(held_flags),
        "held_flagged": float(np.mean([bool(found) for found in flags])) if flags else 0.0,
        "known_species": tested["species"],
        "known_wrong": tested["wrong"],
        "known_count": tested["count"],
        "held_count": held["count"],
    }
    species = sorted({lineage["species"] for lineage in lineages.of_class.values()})
    declared = _declarations(known, known_truth, unseen, truth.to_dict(), species, lineages)
    return report | declared


def _declarations(known, known_truth, unseen, held_truth, species, lineages) -> dict[str, float]:
    """Truthful declarations held up, and false ones caught (inconsistent or cannot decide)."""
    truthful, false = [], []
    answers = [(*answer, truth, True) for answer, truth in zip(
        zip(known.rank, known.taxon, strict=True), known_truth, strict=True)]  # fmt: skip
    answers += [(rank, taxon, held_truth, False) for rank, taxon in zip(
        unseen.rank, unseen.taxon, strict=True)]  # fmt: skip
    for rank, taxon, truth, known_species in answers:
        for name in [*species, held_truth["species"]] if known_species else species:
            found = lineages.of_answer("species", name)
            if found["species"] is None:  # the held-out species: declared by its lineage
                found = {**held_truth}
            decision, _ = declaration_decision(rank, taxon, found, "species", lineages)
            (truthful if name == truth["species"] else false).append(decision)
    count = max(len(false), 1)
    return {
        "truthful_held": float(np.mean([d == INCONSISTENT for d in truthful])) if truthful else 0.0,
        "truthful_consistent": float(np.mean([d == CONSISTENT for d in truthful]))
        if truthful
        else 0.0,
        "false_inconsistent": sum(d == INCONSISTENT for d in false) / count,
        "false_cannot_decide": sum(d == CANNOT_DECIDE for d in false) / count,
        "false_caught": sum(d != CONSISTENT for d in false) / count,
    }


def _rule_reports(outputs: dict[str, Any], target: float) -> dict[str, dict[str, Any]]:
    """Each rule fitted on ``train``/``val`` outputs, scored on ``test`` and ``unknown``."""
    fitted = fit_statistics(outputs["train"]).as_stored()
    temperature = fit_temperature(outputs["val"].logits, outputs["val"].targets)

    def score(rule: str, split: str) -> Any:
        found = outputs[split]
        return fitted.score(rule, found.logits, found.embeddings, temperature)

    reports = {}
    for rule in RULES:
        threshold = threshold_for_recall(score(rule, "val"), target)
        reports[rule] = metrics.open_set_report(
            score(rule, "test"), score(rule, "unknown"), threshold
        )
    return reports


RANK_KEYS = (
    "known_species", "known_wrong", "held_right", "held_wrong", "held_species", "held_genus",
    "held_family", "held_unknown", "held_flagged", "truthful_held", "false_caught",
    "false_inconsistent", "false_cannot_decide",
)  # fmt: skip


def open_set_markdown(result: OpenSetResult) -> str:
    """The comparison tables: one row per rule (means over held-out species), then per species;
    then the rank rule's answers and the declarations, per held-out species."""
    keys = ("auroc", "known_recall", "unknown_rejection", "balanced_recall")
    header = "| {} | AUROC | known recall | unknown rejection | balanced recall |"
    lines = [header.format("rule"), "|---|---|---|---|---|"]
    for rule in sorted(result.rules, key=lambda r: -result.mean(r, "balanced_recall")):
        lines.append(_row([rule], [result.mean(rule, key) for key in keys]))
    lines += ["", header.format("held-out species | rule"), "|---|---|---|---|---|---|"]
    for row in result.rows:
        lines.append(_row([row["held_out"], row["rule"]], [row[key] for key in keys]))
    if result.ranks:
        lines += ["", *_rank_tables(result)]
    return "\n".join(lines) + "\n"


def _rank_tables(result: OpenSetResult) -> list[str]:
    answers = ("held_right", "held_wrong", "held_species", "held_genus", "held_family",
               "held_unknown", "held_flagged", "known_species", "known_wrong")  # fmt: skip
    declarations = ("truthful_held", "false_caught", "false_inconsistent", "false_cannot_decide")
    lines = [
        "Answers at the deepest sure rank: each held-out species' photos (right: at the deepest "
        "rank a model without it could rightly answer; wrong: a wrong taxon at the rank given; "
        "flagged: a regulatory flag stated as certain) and the known test photos.",
        "",
        "| held-out species | views | expected | " + " | ".join(answers) + " |",
        "|---|---|---|" + "---|" * len(answers),
    ]
    for row in result.ranks:
        names = [row["held_out"], str(row["views"]), row["expected"]]
        lines.append(_row(names, [row[key] for key in answers]))
    for views, means in result.rank_means().items():
        names = ["**mean**", views, ""]
        lines.append(_row(names, [means.get(key, float("nan")) for key in answers]))
    lines += [
        "",
        "Declarations: every test photo declared as what it is and as each other species (the "
        "held-out one included), and every held-out photo as each known species. truthful_held: "
        "truthful declarations found inconsistent; false_caught: false ones found inconsistent "
        "or left to the lab (cannot decide).",
        "",
        "| held-out species | views | " + " | ".join(declarations) + " |",
        "|---|---|" + "---|" * len(declarations),
    ]
    for row in result.ranks:
        lines.append(_row([row["held_out"], str(row["views"])], [row[k] for k in declarations]))
    for views, means in result.rank_means().items():
        lines.append(_row(["**mean**", views], [means.get(k, float("nan")) for k in declarations]))
    return lines


def _row(names: list[str], values: list[float]) -> str:
    return "| " + " | ".join([*names, *(f"{value:.3f}" for value in values)]) + " |"
