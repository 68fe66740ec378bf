"""The leave-species-out experiment: how well each unknown-species rule rejects a species the model
never saw. Each species is held out in turn: a model is trained on the others (a full run,
calibrated as usual), then every rule is fitted on its outputs (:mod:`jianmu.calibration.fit`,
the same fitting as after training) and scored on the known test images and on all images of the
held-out species. Trained runs are reused, so an interrupted experiment continues.

Once every model is scored, the rank thresholds are fitted on what the calibration of one model
cannot see, species really never trained on: each model is judged again with thresholds fitted on
the other models' known validation photos and held-out species (in units of each model's
validation scores, :func:`jianmu.calibration.ranks.rank_units`), and the thresholds fitted on all
of them are written to ``rank-thresholds.json`` for ``calibration.open_set``.

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
from jianmu.calibration.apply import Calibrator, resolve_calibration
from jianmu.calibration.fit import (
    RankPool,
    calibrate,
    fit_statistics,
    fit_temperature,
    fit_unit_thresholds,
    known_pool,
    threshold_for_recall,
    transfer_thresholds,
    unseen_pool,
)
from jianmu.calibration.ranks import RankScores, rank_units
from jianmu.calibration.scores import RULES, FeatureStatistics, softmax
from jianmu.config import Config
from jianmu.data.audit import scan_images
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import manifest_items, split_samples, write_manifest
from jianmu.engine.evaluate import rank_figures
from jianmu.engine.predict import Labels
from jianmu.engine.splits import data_root
from jianmu.engine.train import TrainReporter, train
from jianmu.errors import JianmuError, did_you_mean
from jianmu.files import write_text_atomic
from jianmu.rundir import ExperimentDir, held_out_name
from jianmu.taxonomy import Lineage, class_hierarchy, lineage_of, load_taxonomy
from jianmu.verdict import (
    CANNOT_DECIDE,
    CONSISTENT,
    INCONSISTENT,
    RANKS,
    UNKNOWN_RANK,
    Lineages,
    SpecimenRollup,
    declaration_decision,
    deepest_answer,
    top_k,
)


@dataclass
class OpenSetResult:
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per held-out species and rule: AUROC, known recall, unknown rejection, balanced recall."""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    """Per held-out species and number of views: how the model's rank rule answered its photos
    and the known test photos, and how declarations fared."""
    unseen_ranks: list[dict[str, Any]] = field(default_factory=list)
    """The same with rank thresholds fitted on the other held-out species (each never seen by
    its model) instead of the model's own classes left out in turn."""
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
            "unseen_ranks": self.unseen_ranks,
            "unseen_ranks_mean": self.rank_means(self.unseen_ranks),
            "wall_seconds": round(self.wall_seconds, 1),
        }

    def rank_means(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
        """The rank figures (of ``ranks``, by default :attr:`ranks`) averaged over the held-out
        species, per number of views."""
        ranks = self.ranks if ranks is None else ranks
        means = {}
        for views in sorted({row["views"] for row in ranks}):
            rows = [row for row in ranks if row["views"] == views]
            means[str(views)] = {
                key: statistics.fmean(row[key] for row in rows)
                for key in RANK_KEYS
                if all(row.get(key) is not None for row in rows)
            }
        return means


def leave_species_out(
    config: Config,
    reporter: TrainReporter | None = None,
    tta: bool = True,
    held_out: list[str] | None = None,
) -> OpenSetResult:
    """Hold each species out in turn (or only the class folders ``held_out``): train on the
    others, score every rule (with one view and, with ``tta``, the model's test-time views) on
    known test images and on all images of the held-out species, and the rank rule's answers and
    declarations.

    Raises:
        JianmuError: no data, fewer than 3 species, or a ``held_out`` name that is no class folder.
    """
    started = time.perf_counter()
    # the held-out models are calibrated as usual: their rank thresholds are what is fitted here
    config = config.updated(calibration__open_set=None)
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
    folds: list[_Fold] = []
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
        specimen_of = {root / row.path: row.specimen for row in rows}
        scored, ranks, fold = _score_held_out(
            run.best, known_rows, unknown, root, config, held, tta, specimen_of
        )
        result.rows += scored
        result.ranks += ranks
        folds.append(fold)
        write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    if sum(bool(fold.pools) for fold in folds) >= 2:
        max_wrong = config.calibration.max_wrong_rate
        result.unseen_ranks = [row for fold in folds
                               for row in _unseen_calibrated(fold, folds, max_wrong)]  # fmt: skip
        write_text_atomic(folder.rank_thresholds, json.dumps(
            _rank_thresholds(folds, config), indent=2))  # fmt: skip
    result.wall_seconds = time.perf_counter() - started
    write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    write_text_atomic(folder.openset_table, open_set_markdown(result))
    return result


def _score_held_out(checkpoint, known_rows, unknown, root, config, held, tta, specimen_of):
    """Every rule's figures, and the rank rule's answers and declarations (per photo, and per
    specimen where photos share one: ``specimen_of`` path -> specimen), for one held-out run."""
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
    top = min(config.predict.top_k, bundle.num_classes)
    fold = _Fold(held, bundle, calibrator, top, truth, held_flags)
    for view_count in (1, bundle.tta_views) if tta and bundle.tta_views > 1 else (1,):
        outputs, specimens = {}, {}
        for split, split_items in {**items, "unknown": unknown}.items():
            found = bundle.run(split_items, view_count)
            outputs[split] = found.readable()
            specimens[split] = [specimen_of[path] for (path, _), ok in zip(
                split_items, found.ok, strict=True) if ok]  # fmt: skip
        for rule, report in _rule_reports(outputs, target).items():
            name = rule if view_count == 1 else f"{rule}+tta{view_count}"
            rows.append({"held_out": held, "rule": name, **report})
        if calibrator.ranks.fitted and calibrator.ranks.thresholds_for(view_count) is not None:
            figures = _rank_report(
                bundle, calibrator, outputs, specimens, view_count, top, truth, held_flags
            )
            ranks.append({"held_out": held, "views": view_count, **figures})
            fold.keep(view_count, outputs, specimens)
    return rows, ranks, fold


@dataclass
class _Fold:
    """A model trained without one species, with what its rank rule is judged on again once
    every fold is trained: per number of views, its outputs, and its validation photos and the
    held-out species' photos scored at every rank in its units (:func:`rank_units`)."""

    held: str
    bundle: Any
    calibrator: Calibrator
    top: int
    truth: Lineage
    held_flags: list[str]
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)
    specimens: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    known: dict[int, RankScores] = field(default_factory=dict)
    pools: dict[int, list[RankPool]] = field(default_factory=dict)

    def keep(self, views: int, outputs, specimens) -> None:
        self.outputs[views], self.specimens[views] = outputs, specimens
        temperature = self.calibrator.calibration(views).temperature
        ranks = self.calibrator.ranks

        def scored(split: str) -> RankScores:
            found = outputs[split]
            probabilities = softmax(found.logits, temperature)
            return ranks.scored(found.logits, found.embeddings, probabilities, temperature)

        known = self.known[views] = scored("val")
        units = rank_units(known)
        self.pools[views] = [
            known_pool(known.in_units(units), outputs["val"].targets, ranks.hierarchy),
            unseen_pool(scored("unknown").in_units(units), self.truth.to_dict(), ranks.hierarchy),
        ]

    def species_floor(self, views: int) -> float:
        """The unknown-species rule's own threshold, which the species rank never undercuts."""
        meta = {key: value for key, value in self.calibrator.meta.items() if key != "ranks"}
        return resolve_calibration(meta, views).threshold

    def with_thresholds(self, views: int, thresholds: dict[str, float]) -> Calibrator:
        ranks = dict(self.calibrator.meta["ranks"])
        stored = {rank: (t if np.isfinite(t) else None) for rank, t in thresholds.items()}
        ranks["thresholds"] = {**ranks["thresholds"], str(views): stored}
        return Calibrator({**self.calibrator.meta, "ranks": ranks}, self.calibrator.statistics)


def _unseen_calibrated(fold: _Fold, folds: list[_Fold], max_wrong_rate: float) -> list[dict]:
    """``fold``'s rank rule with thresholds fitted on the other folds' known validation photos
    and held-out species (never on its own), carried over in units."""
    rows = []
    others = [other for other in folds if other is not fold]
    for views in fold.pools:
        fitted = fit_unit_thresholds(_pooled(others, views), max_wrong_rate)
        thresholds = transfer_thresholds(
            fitted["thresholds"], fold.known[views], fold.species_floor(views)
        )
        calibrator = fold.with_thresholds(views, thresholds)
        figures = _rank_report(
            fold.bundle, calibrator, fold.outputs[views], fold.specimens[views], views, fold.top,
            fold.truth, fold.held_flags,
        )  # fmt: skip
        rows.append({"held_out": fold.held, "views": views, **figures})
    return rows


def _pooled(folds: list[_Fold], views: int) -> list[RankPool]:
    """The folds' known and held-out pools scored with ``views`` views."""
    return [pool for fold in folds for pool in fold.pools.get(views, [])]


def _rank_thresholds(folds: list[_Fold], config: Config) -> dict[str, Any]:
    """Rank thresholds in units fitted on every fold's known validation photos and held-out
    species: what a model of this recipe, trained on every species, can be calibrated with
    (``calibration.open_set``)."""
    counts = sorted({views for fold in folds for views in fold.pools})
    fitted = {
        views: fit_unit_thresholds(_pooled(folds, views), config.calibration.max_wrong_rate)
        for views in counts
    }
    return {
        "thresholds_in_units": {str(v): fit["thresholds"] for v, fit in fitted.items()},
        "validation": {str(v): fit["validation"] for v, fit in fitted.items()},
        "held_out": [fold.held for fold in folds if fold.pools],
        "rule": config.calibration.rule,
        "max_wrong_rate": config.calibration.max_wrong_rate,
        "units": "per rank, (score - median) / interquartile range of the model's known "
        "validation photos",
    }


def _rank_calibrator(bundle, items, config: Config) -> Calibrator:
    """The run's calibration fitted again by this code and ``config`` (a reused run may carry
    none, or one fitted by an older rule; in memory: the run's checkpoint is left as it is).
    The fitting is seeded, so for a run trained by this code it is the calibration it carries."""
    run = partial(bundle.run, batch_size=config.calibration.batch_size)
    hierarchy = bundle.calibrator.ranks.hierarchy
    fitted = calibrate(
        run, items, config.calibration, config.seed, hierarchy, tta_views=bundle.tta_views
    )
    meta = {**bundle.meta, **fitted.record}
    return Calibrator(meta, FeatureStatistics.from_arrays(fitted.statistics.to_arrays()))


@dataclass
class _Answers:
    """Answers at a rank, one per photo or per specimen."""

    rank: list[str]
    taxon: list[str | None]


def _rank_report(bundle, calibrator, outputs, specimens, views, top, truth, held_flags):
    """How the rank rule answered the held-out species' photos and the known test photos, whether
    the held-out photos were flagged as regulated (rightly or not), and what became of
    declarations: every photo declared as what it is, and as each other species the model knows
    (and a known photo as the held-out species). Where photos share specimens, the same figures
    per specimen (``specimen_...``), rolled up by predict's rule on its ``top`` classes."""
    lineages = Lineages(bundle.classes, calibrator.ranks.lineage)
    labels = Labels(bundle, top, views)
    predicted = {split: calibrator.apply(outputs[split].logits, outputs[split].embeddings, views)
                 for split in ("test", "unknown")}  # fmt: skip
    truths = {
        "test": [lineages.of_class[bundle.classes[t]] for t in outputs["test"].targets],
        "unknown": [truth.to_dict()] * len(outputs["unknown"].targets),
    }
    report = {"expected": deepest_answer(truth.to_dict(), lineages)[0],
              "held_regulated": bool(held_flags)}  # fmt: skip
    answers = {split: _Answers(found.rank, found.taxon) for split, found in predicted.items()}
    report |= _answer_figures(answers, truths, lineages, labels, held_flags)
    if any(len(set(specimens[s])) < len(specimens[s]) for s in ("test", "unknown")):
        rollup = partial(_specimen_answers, classes=bundle.classes, top=top,
                         lineage=calibrator.ranks.lineage)  # fmt: skip
        grouped = {split: rollup(predicted[split], specimens[split]) for split in predicted}
        firsts = {split: _first_of_each(specimens[split], truths[split]) for split in truths}
        figures = _answer_figures(grouped, firsts, lineages, labels, held_flags)
        report |= {f"specimen_{key}": value for key, value in figures.items()}
    return report


def _answer_figures(answers, truths, lineages, labels, held_flags) -> dict[str, Any]:
    known, unseen = answers["test"], answers["unknown"]
    held = rank_figures(unseen, truths["unknown"], lineages)
    tested = rank_figures(known, truths["test"], lineages)
    stated = [labels.answer(rank, taxon, "")["flags"] for rank, taxon in zip(
        unseen.rank, unseen.taxon, strict=True)]  # fmt: skip
    carried = {flag.split()[0] for flag in held_flags}  # CITES, Hongmu, quarantine
    report = {
        "held_right": held["deepest_right"],
        "held_wrong": held["wrong"],
        **{f"held_{rank}": held[rank] for rank in (*RANKS, UNKNOWN_RANK)},
        "held_flagged": _share([bool(flags) for flags in stated]),
        "held_flagged_wrong": _share(
            [any(flag.split()[0] not in carried for flag in flags) for flags in stated]
        ),
        "known_species": tested["species"],
        "known_wrong": tested["wrong"],
        "known_count": tested["count"],
        "held_count": held["count"],
    }
    species = sorted({lineage["species"] for lineage in lineages.of_class.values()})
    held_truth = truths["unknown"][0] if truths["unknown"] else {}
    return report | _declarations(known, truths["test"], unseen, held_truth, species, lineages)


def _specimen_answers(prediction, specimens: list[str], classes, top: int, lineage) -> _Answers:
    """One answer per specimen (in first-seen order), by the specimen rule of predict."""
    rollup = SpecimenRollup(classes, top, lineage)
    for row, specimen in enumerate(specimens):
        probabilities = prediction.probabilities[row]
        best = [(classes[i], float(probabilities[i])) for i in top_k(probabilities, top)]
        rollup.add(specimen, best, prediction.rank[row], prediction.taxon[row])
    results = rollup.results()
    return _Answers([r.rank for r in results], [r.taxon for r in results])


def _first_of_each(specimens: list[str], values: list) -> list:
    """``values`` of the first photo of each specimen, in first-seen order."""
    first: dict[str, Any] = {}
    for specimen, value in zip(specimens, values, strict=True):
        first.setdefault(specimen, value)
    return list(first.values())


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else 0.0


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


_ANSWER_KEYS = (
    "held_right", "held_wrong", "held_species", "held_genus", "held_family", "held_unknown",
    "held_flagged", "held_flagged_wrong", "known_species", "known_wrong",
)  # fmt: skip
_DECLARATION_KEYS = ("truthful_held", "false_caught", "false_inconsistent", "false_cannot_decide")
RANK_KEYS = tuple(
    prefix + key for prefix in ("", "specimen_") for key in (*_ANSWER_KEYS, *_DECLARATION_KEYS)
)


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
    lines = []
    unseen_title = (
        "With rank thresholds fitted on species never seen (each model's thresholds carried "
        "over, in units, from the other held-out species and their models): "
    )
    for title, ranks in (("", result.ranks), (unseen_title, result.unseen_ranks)):
        for unit, prefix in (("photo", ""), ("specimen", "specimen_")):
            rows = [row for row in ranks if prefix + "held_right" in row]
            if rows:
                lines += _unit_tables(rows, result.rank_means(ranks), unit, prefix, title)
    return lines


def _unit_tables(rows, means, unit: str, prefix: str, title: str = "") -> list[str]:
    """The rank rule's answers and the declarations, per ``unit`` (photo or specimen)."""
    answers = [prefix + key for key in _ANSWER_KEYS]
    declarations = [prefix + key for key in _DECLARATION_KEYS]
    lines = [
        f"{title}Answers at the deepest sure rank, per {unit}: each held-out species' {unit}s "
        "(right: at the deepest rank a model without it could rightly answer; wrong: a wrong "
        "taxon at the rank given; flagged: a regulatory flag stated as certain; flagged_wrong: "
        f"a flag stated that the species does not carry) and the known test {unit}s.",
        "",
        "| held-out species | views | expected | " + " | ".join(answers) + " |",
        "|---|---|---|" + "---|" * len(answers),
    ]
    for row in rows:
        names = [row["held_out"], str(row["views"]), row["expected"]]
        lines.append(_row(names, [row[key] for key in answers]))
    for views, mean in means.items():
        lines.append(_row(["**mean**", views, ""], [mean.get(k, float("nan")) for k in answers]))
    lines += [
        "",
        f"{title}Declarations, per {unit}: every test {unit} declared as what it is and as each "
        f"other species (the held-out one included), and every held-out {unit} as each known "
        "species. truthful_held: truthful declarations found inconsistent; false_caught: false "
        "ones found inconsistent or left to the lab (cannot decide).",
        "",
        "| held-out species | views | " + " | ".join(declarations) + " |",
        "|---|---|" + "---|" * len(declarations),
    ]
    for row in rows:
        lines.append(_row([row["held_out"], str(row["views"])], [row[k] for k in declarations]))
    for views, mean in means.items():
        lines.append(_row(["**mean**", views], [mean.get(k, float("nan")) for k in declarations]))
    return [*lines, ""]


def _row(names: list[str], values: list[float]) -> str:
    return "| " + " | ".join([*names, *(f"{value:.3f}" for value in values)]) + " |"
