"""After training: temperature scaling and the unknown-species rule, fitted on held-out data and
stored in the checkpoint so that every later use (eval, export, predict) shares them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jianmu import metrics
from jianmu.bundle import scorer_from_statistics
from jianmu.config import EvalConfig
from jianmu.engine.inference import DIHEDRAL_VIEWS, collect_outputs
from jianmu.engine.openset import KNN_K, RULES, OpenSetScorer, fit_scorer
from jianmu.models import load_checkpoint, save_checkpoint

MAX_KNN_BANK = 10_000  # training embeddings kept for the kNN rule (a seeded subset beyond this)


def calibrate_checkpoint(
    path: Path,
    items: dict[str, list],
    config: EvalConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Fit the temperature on ``items["val"]`` and the open-set statistics on ``items["train"]``;
    choose each rule's threshold for ``config.target_known_recall`` on validation images; rewrite
    the checkpoint with them. Returns the calibration record stored in its metadata."""
    checkpoint = load_checkpoint(path)
    model = checkpoint.build_model().to(device)
    views = DIHEDRAL_VIEWS if config.tta else 1
    train = seeded_subset(items["train"], MAX_KNN_BANK, seed)
    train_outputs = collect_outputs(model, train, checkpoint.preprocessing, views=views)
    val_outputs = collect_outputs(model, items["val"], checkpoint.preprocessing, views=views)
    fitted = fit_scorer(train_outputs, val_outputs)
    tensors = _tensors(fitted)
    scorer = _scorer_from(tensors, fitted.temperature)  # as stored (float32): thresholds match
    targets = val_outputs.targets
    ece_before = metrics.expected_calibration_error(metrics.softmax(val_outputs.logits), targets)
    calibrated = metrics.softmax(val_outputs.logits, scorer.temperature)
    thresholds = rule_thresholds(scorer, val_outputs, config.target_known_recall)
    record = {
        "calibration": {
            "temperature": scorer.temperature,
            "views": views,
            "ece_val_before": ece_before,
            "ece_val_after": metrics.expected_calibration_error(calibrated, targets),
        },
        "unknown": {
            "rule": config.unknown_score,
            "threshold": thresholds[config.unknown_score],
            "target_known_recall": config.target_known_recall,
            "thresholds": thresholds,
            "knn_k": KNN_K,
        },
    }
    if views > 1:
        # Prediction runs one view unless asked for TTA: its own temperature and thresholds, for the
        # same feature statistics.
        single = collect_outputs(model, items["val"], checkpoint.preprocessing, views=1)
        one_view = OpenSetScorer(
            metrics.fit_temperature(single.logits, single.targets),
            scorer.mahalanobis,
            scorer.background,
            scorer.knn,
        )
        record["calibration"]["single_view"] = {
            "temperature": one_view.temperature,
            "thresholds": rule_thresholds(one_view, single, config.target_known_recall),
        }
    save_checkpoint(path, checkpoint.state_dict, {**checkpoint.meta, **record}, tensors)
    return record


def rule_thresholds(scorer: OpenSetScorer, outputs, target_recall: float) -> dict[str, float]:
    """Each rule's threshold for ``target_recall`` of ``outputs`` (known images); ``knn`` only
    when the scorer holds its bank (bundles keep it for the ``knn`` rule alone)."""
    return {
        rule: metrics.threshold_for_recall(scorer.score(rule, outputs), target_recall)
        for rule in RULES
        if rule != "knn" or scorer.knn is not None
    }


def _scorer_from(extras: dict[str, torch.Tensor], temperature: float) -> OpenSetScorer:
    return scorer_from_statistics({k: v.numpy() for k, v in extras.items()}, temperature)


def _tensors(scorer: OpenSetScorer) -> dict[str, torch.Tensor]:
    arrays = {
        "openset.means": scorer.mahalanobis.means,
        "openset.precision": scorer.mahalanobis.precision,
        "openset.background_mean": scorer.background.means,
        "openset.background_precision": scorer.background.precision,
        "openset.knn": scorer.knn.embeddings,
    }
    return {name: torch.from_numpy(np.asarray(a, dtype=np.float32)) for name, a in arrays.items()}


def seeded_subset(items: list, limit: int, seed: int = 0) -> list:
    """At most ``limit`` of ``items``, drawn with ``seed``, in their original order."""
    if len(items) <= limit:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), limit, replace=False)
    return [items[i] for i in sorted(chosen)]
