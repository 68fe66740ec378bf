"""Unknown species: scoring rules and the leave-species-out protocol.

A rule gives each image a score, higher = more like a known species; images under the threshold
become "unknown - refer to lab". The threshold is the largest one that keeps the target share of
*known* validation images (``eval.target_known_recall``). The protocol trains without one species
at a time and measures how that species' images are rejected.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jianmu import metrics
from jianmu.config import Config
from jianmu.data.audit import scan_images
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import split_samples, write_manifest
from jianmu.engine.inference import Outputs, collect_outputs
from jianmu.errors import JianmuError
from jianmu.models import atomic_write, load_checkpoint
from jianmu.scoring import KNN_K, RULES, OpenSetScorer  # noqa: F401 - re-exported

# Shrinkage of the shared covariance, relative to its mean variance: 0.1 to 0.3 did equally well
# on wood-swfu5 (datasets/wood-swfu5.md); much less over-trusts a few hundred training images.
MAHALANOBIS_RIDGE = 0.1


def fit_scorer(train: Outputs, val: Outputs) -> OpenSetScorer:
    """Temperature from validation logits; feature statistics from training embeddings."""
    temperature = metrics.fit_temperature(val.logits, val.targets)
    everything = np.zeros(len(train.targets), dtype=int)
    return OpenSetScorer(
        temperature,
        metrics.fit_mahalanobis(train.embeddings, train.targets, ridge=MAHALANOBIS_RIDGE),
        metrics.fit_mahalanobis(train.embeddings, everything, ridge=MAHALANOBIS_RIDGE),
        metrics.fit_knn(train.embeddings),
    )


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


def run_open_set(config: Config, reporter=None, views: tuple[int, ...] = (1,)) -> OpenSetResult:
    """Leave each species out in turn: train on the others, score every rule on known test images
    and on all images of the held-out species."""
    from jianmu.engine.train import train

    started = time.perf_counter()
    if config.data.root is None:
        raise JianmuError("no data: give --data ROOT (or data.root in the config)")
    root = Path(config.data.root)
    out = Path(config.out) if config.out else Path("runs") / time.strftime("openset-%Y%m%d-%H%M%S")
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    records = scan_images([s.path for s in samples], config.data.workers)
    rows = split_samples(samples, records, config.data, config.seed, root).rows
    classes = sorted({row.label for row in rows}, key=natural_key)
    if len(classes) < 3:
        raise JianmuError("the open-set protocol needs at least 3 species (2 stay known)")
    result = OpenSetResult(out)
    for held in classes:
        run_dir = out / f"without-{held}"
        known_rows = [row for row in rows if row.label != held]
        if not (run_dir / "test_metrics.json").is_file():
            manifest = write_manifest(out / f"without-{held}.csv", known_rows)
            data = config.data.model_copy(update={"manifest": manifest})
            resume = run_dir if (run_dir / "last.state.pt").is_file() else None
            if reporter is not None and hasattr(reporter, "prefix"):
                reporter.prefix = f"without {held} "
            train(config.model_copy(update={"out": run_dir, "data": data}), resume, reporter)
        unknown = [(root / row.path, -1) for row in rows if row.label == held]
        result.rows += _score_held_out(run_dir, known_rows, unknown, root, config, held, views)
        text = json.dumps(result.to_dict(), indent=2)
        atomic_write(out / "openset.json", lambda tmp, text=text: tmp.write_text(text))
    result.wall_seconds = time.perf_counter() - started
    text = json.dumps(result.to_dict(), indent=2)
    atomic_write(out / "openset.json", lambda tmp: tmp.write_text(text))
    return result


def _score_held_out(run_dir, known_rows, unknown, root, config, held, views) -> list[dict]:
    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    model = checkpoint.build_model()
    index = {name: i for i, name in enumerate(checkpoint.classes)}
    items = {
        split: [(root / r.path, index[r.label]) for r in known_rows if r.split == split]
        for split in ("train", "val", "test")
    }
    rows = []
    for view_count in views:
        outputs = {
            split: collect_outputs(model, split_items, checkpoint.preprocessing, views=view_count)
            for split, split_items in {**items, "unknown": unknown}.items()
        }
        scorer = fit_scorer(outputs["train"], outputs["val"])
        for rule in RULES:
            threshold = metrics.threshold_for_recall(
                scorer.score(rule, outputs["val"]), config.eval.target_known_recall
            )
            known = scorer.score(rule, outputs["test"])
            unknown_scores = scorer.score(rule, outputs["unknown"])
            report = metrics.open_set_report(known, unknown_scores, threshold)
            name = rule if view_count == 1 else f"{rule}+tta{view_count}"
            rows.append({"held_out": held, "rule": name, **report})
    return rows


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
