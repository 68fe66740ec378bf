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
from pathlib import Path
from typing import Any

from jianmu import metrics
from jianmu.bundle import load_model
from jianmu.calibration.fit import fit_statistics, fit_temperature, threshold_for_recall
from jianmu.calibration.scores import RULES
from jianmu.config import Config
from jianmu.data.audit import scan_images
from jianmu.data.preprocess import DIHEDRAL_VIEWS
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import manifest_items, split_samples, write_manifest
from jianmu.engine.splits import data_root
from jianmu.engine.train import TrainReporter, train
from jianmu.errors import JianmuError
from jianmu.files import write_text_atomic
from jianmu.rundir import ExperimentDir, held_out_name

VIEWS = (1, DIHEDRAL_VIEWS)


@dataclass
class OpenSetResult:
    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
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
            "wall_seconds": round(self.wall_seconds, 1),
        }


def leave_species_out(
    config: Config, reporter: TrainReporter | None = None, views: tuple[int, ...] = VIEWS
) -> OpenSetResult:
    """Hold each species out in turn: train on the others, score every rule (for each number of
    test-time ``views``) on known test images and on all images of the held-out species."""
    started = time.perf_counter()
    root = data_root(config)
    folder = ExperimentDir(config.out or Path("runs") / time.strftime("openset-%Y%m%d-%H%M%S"))
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    records = scan_images([s.path for s in samples], config.data)
    rows = split_samples(samples, records, config.data, config.seed, root).rows
    classes = sorted({row.label for row in rows}, key=natural_key)
    if len(classes) < 3:
        raise JianmuError("the open-set protocol needs at least 3 species (2 stay known)")
    result = OpenSetResult(folder.path)
    for held in classes:
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
        result.rows += _score_held_out(run.best, known_rows, unknown, root, config, held, views)
        write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    result.wall_seconds = time.perf_counter() - started
    write_text_atomic(folder.openset, json.dumps(result.to_dict(), indent=2))
    write_text_atomic(folder.openset_table, open_set_markdown(result))
    return result


def _score_held_out(checkpoint, known_rows, unknown, root, config, held, views) -> list[dict]:
    bundle = load_model(checkpoint)
    items = manifest_items(known_rows, root, bundle.classes)
    target = config.calibration.target_known_recall
    rows = []
    for view_count in views:
        outputs = {
            split: bundle.run(split_items, view_count).readable()
            for split, split_items in {**items, "unknown": unknown}.items()
        }
        for rule, report in _rule_reports(outputs, target).items():
            name = rule if view_count == 1 else f"{rule}+tta{view_count}"
            rows.append({"held_out": held, "rule": name, **report})
    return rows


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


def open_set_markdown(result: OpenSetResult) -> str:
    """The comparison table: one row per rule (means over held-out species), then per species."""
    keys = ("auroc", "known_recall", "unknown_rejection", "balanced_recall")
    header = "| {} | AUROC | known recall | unknown rejection | balanced recall |"
    lines = [header.format("rule"), "|---|---|---|---|---|"]
    for rule in sorted(result.rules, key=lambda r: -result.mean(r, "balanced_recall")):
        lines.append(_row([rule], [result.mean(rule, key) for key in keys]))
    lines += ["", header.format("held-out species | rule"), "|---|---|---|---|---|---|"]
    for row in result.rows:
        lines.append(_row([row["held_out"], row["rule"]], [row[key] for key in keys]))
    return "\n".join(lines) + "\n"


def _row(names: list[str], values: list[float]) -> str:
    return "| " + " | ".join([*names, *(f"{value:.3f}" for value in values)]) + " |"
