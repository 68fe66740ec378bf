"""Fitting a model's calibration on its own outputs: the temperature on validation logits, the
feature statistics on training embeddings, and each unknown-species rule's threshold for the
target share of known validation images, for one view and (with ``calibration.tta``) for the
test-time views the model's training covered (``tta_views``: 8 flips and quarter turns, or 4 flips).

:func:`calibrate` is the one fitting procedure. It gets the model's outputs from ``run`` (a
bundle's :meth:`~jianmu.bundle.ModelBundle.run`): the same runner and numpy/OpenCV preprocessing
that apply the calibration at predict time, so what is fitted is what is applied. Training calls it
on the best checkpoint; the int8 export calls it again on the quantized model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from jianmu.calibration.ranks import (
    RANKED_RULES,
    RANKS,
    SUMMED_RULES,
    Hierarchy,
    RankScores,
    class_scores,
    decide,
    rank_scores,
    rank_units,
)
from jianmu.calibration.scores import (
    KNN_K,
    FeatureStatistics,
    KnnModel,
    MahalanobisModel,
    l2_normalize,
    softmax,
)
from jianmu.config import CalibrationConfig
from jianmu.data.preprocess import DIHEDRAL_VIEWS
from jianmu.errors import JianmuError
from jianmu.metrics import expected_calibration_error
from jianmu.outputs import Item, Outputs, as_matrix, as_scores_and_targets, as_vector

# Shrinkage of the shared covariance, relative to its mean variance: 0.1 to 0.3 did equally well
# on wood-swfu5 (datasets/wood-swfu5.md); much less over-trusts a few hundred training images.
MAHALANOBIS_RIDGE = 0.1
MAX_KNN_BANK = 10_000  # training embeddings kept for the statistics (a seeded subset beyond this)

RunOutputs = Callable[[Sequence[Item], int], Outputs]
"""``run(items, views)``: a model's outputs on ``items`` averaged over ``views`` views."""


@dataclass
class Fitted:
    """A calibration: the metadata record (``calibration``, ``unknown``) and the statistics."""

    record: dict[str, Any]
    statistics: FeatureStatistics
    train_quality: np.ndarray | None = None
    """The photo-quality measures of the training photos looked at (for the quality gate)."""


def calibrate(
    run: RunOutputs,
    items: dict[str, Sequence[Item]],
    config: CalibrationConfig,
    seed: int = 0,
    hierarchy: Hierarchy | None = None,
    transferred: dict[str, Any] | None = None,
    tta_views: int = DIHEDRAL_VIEWS,
) -> Fitted:
    """Fit temperature, statistics and thresholds on ``items["train"]`` and ``items["val"]``, and,
    given the classes' ``hierarchy``, the rank thresholds (:func:`fit_rank_thresholds`): with
    ``transferred`` (:func:`read_rank_thresholds`), those fitted on species never seen, in units.
    With ``config.tta``, fitted for ``tta_views`` views too (the model's
    :attr:`~jianmu.bundle.ModelBundle.tta_views`).

    Raises:
        JianmuError: no readable training or validation image.
    """
    views = tta_views if config.tta else 1
    train = _readable(run(seeded_subset(items["train"], MAX_KNN_BANK, seed), views), "training")
    val = _readable(run(items["val"], views), "validation")
    statistics = fit_statistics(train).as_stored()  # thresholds for the float32 statistics
    temperature = fit_temperature(val.logits, val.targets)
    thresholds = fit_thresholds(statistics, val, temperature, config.target_known_recall)
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "views": views,
        "ece_val_before": expected_calibration_error(softmax(val.logits), val.targets),
        "ece_val_after": expected_calibration_error(softmax(val.logits, temperature), val.targets),
    }
    if views > 1:
        # Prediction runs one view unless asked for TTA: its own temperature and thresholds, for
        # the same statistics.
        single = _readable(run(items["val"], 1), "validation")
        single_temperature = fit_temperature(single.logits, single.targets)
        calibration["single_view"] = {
            "temperature": single_temperature,
            "thresholds": fit_thresholds(
                statistics, single, single_temperature, config.target_known_recall
            ),
        }
    unknown = {
        "rule": config.rule,
        "threshold": thresholds[config.rule],
        "target_known_recall": config.target_known_recall,
        "thresholds": thresholds,
        "knn_k": KNN_K,
    }
    record: dict[str, Any] = {"calibration": calibration, "unknown": unknown}
    if hierarchy is not None and config.rule in RANKED_RULES and config.max_wrong_rate < 1:
        fits = {views: (val, temperature, thresholds[config.rule])}
        if views > 1:
            single_view = calibration["single_view"]
            fits[1] = (single, single_view["temperature"], single_view["thresholds"][config.rule])
        in_units = (transferred or {}).get("thresholds_in_units") or {}
        if transferred is not None and any(str(count) not in in_units for count in fits):
            raise JianmuError(
                f"the open-set rank thresholds were fitted for {sorted(in_units)} views; this "
                f"calibration needs {sorted(str(count) for count in fits)}"
            )
        fitted = {
            str(count): fit_rank_thresholds(
                statistics, config.rule, outputs, hierarchy, temperature_, config.max_wrong_rate,
                species_floor, in_units.get(str(count)),
            )
            for count, (outputs, temperature_, species_floor) in fits.items()
        }  # fmt: skip
        record["ranks"] = {
            # None: never answer at that rank (JSON has no infinity)
            "thresholds": {
                count: {
                    rank: (t if np.isfinite(t) else None) for rank, t in fit["thresholds"].items()
                }
                for count, fit in fitted.items()
            },
            "validation": {count: fit["validation"] for count, fit in fitted.items()},
            "max_wrong_rate": config.max_wrong_rate,
        }
        if transferred is not None:
            record["ranks"]["transferred"] = transferred
    return Fitted(record, statistics, train.quality)


def fit_rank_thresholds(
    statistics: FeatureStatistics,
    rule: str,
    val: Outputs,
    hierarchy: Hierarchy,
    temperature: float,
    max_wrong_rate: float,
    species_floor: float = -np.inf,
    in_units: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """The species, genus and family thresholds that answer as deep as possible with at most
    ``max_wrong_rate`` of wrong answers, on known validation images and, separately, on the same
    images standing in for species the model never saw (each class left out in turn: its images
    must then be answered at a coarser rank its other classes share, or unknown). The species
    threshold is never looser than ``species_floor`` (the unknown rule's own, for its target
    recall), and the genus and family thresholds never lower than the lowest score of a known
    validation image at that rank: a left-out class is easier to tell apart than a species never
    trained on.

    With ``in_units`` (thresholds fitted on species other models of the recipe never saw,
    :func:`fit_unit_thresholds`), those thresholds in this model's units (:func:`rank_units` of
    its known validation photos) instead, the species one still never looser than
    ``species_floor``.

    Returns:
        ``{"thresholds": {rank: t}, "validation": {...}}``: the wrong and answered shares reached.
    """
    probabilities = softmax(val.logits, temperature)
    scores = class_scores(statistics, rule, val.logits, val.embeddings, temperature)
    summed = rule in SUMMED_RULES
    known = rank_scores(scores, probabilities, hierarchy, summed=summed)
    known_truth = known_pool(known, val.targets, hierarchy).truth
    if in_units is not None:
        thresholds = transfer_thresholds(in_units, known, species_floor)
        figures = _judge(known, known_truth, thresholds)
        return {
            "thresholds": thresholds,
            "validation": {f"known_{key}": value for key, value in figures.items()},
        }
    unseen_parts, unseen_truth = [], []
    classes = len(hierarchy.member["species"])
    for left_out in range(classes):
        rows = np.flatnonzero(val.targets == left_out)
        if not len(rows) or classes < 2:
            continue
        alive = np.arange(classes) != left_out
        scored = rank_scores(scores[rows], probabilities[rows], hierarchy, alive, summed=summed)
        unseen_parts.append(scored)
        unseen_truth.append(np.tile(_answerable(hierarchy, left_out, alive), (len(rows), 1)))
    pools = [(known, known_truth)]
    if unseen_parts:
        pools.append((RankScores.concatenate(unseen_parts), np.concatenate(unseen_truth)))
    floors = {"species": species_floor}
    for rank in ("genus", "family"):
        # never answer farther out than every known validation image of the taxon lies: a species
        # left out still shares the model's features, so a looser threshold learnt from it would
        # take in photos of taxa the model never saw
        seen = known.scores[rank][(known.taxa[rank] >= 0) & np.isfinite(known.scores[rank])]
        floors[rank] = threshold_for_recall(seen, 1.0) if len(seen) > 1 else np.inf
    thresholds = _search_thresholds(pools, max_wrong_rate, floors)
    figures = [_judge(scored, truth, thresholds) for scored, truth in pools]
    names = ("known", "unseen")
    validation = {
        f"{name}_{key}": value
        for name, figure in zip(names, figures, strict=False)
        for key, value in figure.items()
    }
    return {"thresholds": thresholds, "validation": validation}


@dataclass
class RankPool:
    """Photos scored at every rank by one model, in its units (:func:`rank_units`), with what
    each may rightly be answered (per rank, as :func:`_answerable`)."""

    scored: RankScores
    truth: np.ndarray  # N x 3


def known_pool(scored: RankScores, targets: np.ndarray, hierarchy: Hierarchy) -> RankPool:
    """Known photos (``targets``: their classes) and their classes' taxa."""
    return RankPool(scored, np.stack([hierarchy.member[rank][targets] for rank in RANKS], 1))


def unseen_pool(scored: RankScores, lineage: dict[str, str | None], hierarchy: Hierarchy):
    """Photos of a species the model never saw, of ``lineage``: right at a rank only as a taxon
    the model knows there (never as a species)."""
    truth = [
        -2 if rank == "species" or lineage.get(rank) not in hierarchy.names[rank]
        else hierarchy.names[rank].index(lineage[rank])
        for rank in RANKS
    ]  # fmt: skip
    return RankPool(scored, np.tile(truth, (len(scored.scores["species"]), 1)))


def fit_unit_thresholds(pools: list[RankPool], max_wrong_rate: float) -> dict[str, Any]:
    """Rank thresholds, in units, that answer as deep as possible with at most ``max_wrong_rate``
    wrong in each pool: known photos and photos of species never seen, from models of one recipe
    each trained without one species (the leave-species-out experiment).

    Returns:
        ``{"thresholds": {rank: t or None (never)}, "validation": {"worst_wrong",
        "mean_depth"}}``: the largest wrong share of any pool, and the mean depth of the right
        answers (species 3, genus 2, family 1).
    """
    pairs = [(pool.scored, pool.truth) for pool in pools]
    thresholds = _search_thresholds(pairs, max_wrong_rate, {})
    figures = [_judge(scored, truth, thresholds) for scored, truth in pairs]
    validation = {
        "worst_wrong": max(figure["wrong"] for figure in figures),
        "mean_depth": float(np.mean([figure["depth"] for figure in figures])),
    }
    stored = {rank: (t if np.isfinite(t) else None) for rank, t in thresholds.items()}
    return {"thresholds": stored, "validation": validation}


def transfer_thresholds(
    in_units: dict[str, float | None], known: RankScores, species_floor: float = -np.inf
) -> dict[str, float]:
    """Thresholds in units (None: never answer at that rank) as the scores of the model whose
    known validation photos scored ``known``; the species one never looser than
    ``species_floor``."""
    units = rank_units(known)
    thresholds = {
        rank: np.inf if in_units.get(rank) is None
        else float(in_units[rank]) * units[rank][1] + units[rank][0]
        for rank in RANKS
    }  # fmt: skip
    thresholds["species"] = max(thresholds["species"], species_floor)
    return thresholds


def read_rank_thresholds(file: str | Path, rule: str, max_wrong_rate: float) -> dict[str, Any]:
    """The rank thresholds a leave-species-out experiment fitted on its held-out species
    (its ``rank-thresholds.json``), for a calibration by ``rule`` to ``max_wrong_rate``.

    Raises:
        JianmuError: no such file, not such thresholds, or fitted for another rule or rate.
    """
    file = Path(file)
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
        in_units = found["thresholds_in_units"]
    except (OSError, ValueError, KeyError, TypeError):
        raise JianmuError(
            f"calibration.open_set: no rank thresholds in {file} (run `jianmu eval --open-set` "
            "with the same recipe first)"
        ) from None
    if found.get("rule") != rule or found.get("max_wrong_rate") != max_wrong_rate:
        raise JianmuError(
            f"calibration.open_set: {file} was fitted for rule {found.get('rule')} and "
            f"max_wrong_rate {found.get('max_wrong_rate')}; this calibration uses {rule} and "
            f"{max_wrong_rate}"
        )
    return {"thresholds_in_units": in_units, "held_out": found.get("held_out", []),
            "source": str(file)}  # fmt: skip


def _answerable(hierarchy: Hierarchy, left_out: int, alive: np.ndarray) -> np.ndarray:
    """What a left-out class's images may be answered, per rank: its taxon when another class
    still shares it, else nothing (-2: any answer at that rank is wrong)."""
    truth = []
    for rank in RANKS:
        taxon = hierarchy.member[rank][left_out]
        shared = rank != "species" and taxon >= 0 and (hierarchy.member[rank][alive] == taxon).any()
        truth.append(taxon if shared else -2)
    return np.array(truth)


def _search_thresholds(
    pools: list[tuple[RankScores, np.ndarray]], max_wrong_rate: float, floors: dict[str, float]
) -> dict[str, float]:
    """Greedy search: for each species threshold, the loosest feasible genus threshold, then the
    loosest feasible family threshold; the combination answering deepest wins. Wrong answers only
    grow as a threshold loosens, so "loosest feasible" is found by a scan."""
    candidates = {}
    for rank in RANKS:
        pooled = np.concatenate([scored.scores[rank] for scored, _ in pools])
        pooled = pooled[np.isfinite(pooled)]
        steps = np.unique(np.quantile(pooled, np.linspace(0, 1, 41))) if len(pooled) else []
        candidates[rank] = [*steps, np.inf]  # loosest first; inf: never answer at this rank
    for rank, floor in floors.items():
        candidates[rank] = [t for t in candidates[rank] if t >= floor] or [np.inf]
    best, best_thresholds = -1.0, {rank: np.inf for rank in RANKS}
    for species in candidates["species"]:
        thresholds = {"species": species, "genus": np.inf, "family": np.inf}
        if not _feasible(pools, thresholds, max_wrong_rate):
            continue
        for rank in ("genus", "family"):
            for value in candidates[rank]:
                trial = {**thresholds, rank: value}
                if _feasible(pools, trial, max_wrong_rate):
                    thresholds = trial
                    break
        utility = sum(_judge(scored, truth, thresholds)["depth"] for scored, truth in pools)
        if utility > best + 1e-12:
            best, best_thresholds = utility, thresholds
    return {rank: float(value) for rank, value in best_thresholds.items()}


def _feasible(pools, thresholds: dict[str, float], max_wrong_rate: float) -> bool:
    return all(
        _judge(scored, truth, thresholds)["wrong"] <= max_wrong_rate for scored, truth in pools
    )


def _judge(scored: RankScores, truth: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    """Shares answered at each rank, wrong, and the mean depth of the right answers (species 3,
    genus 2, family 1)."""
    answer = decide(scored, thresholds)
    rows = np.arange(len(answer))
    given = np.stack([scored.taxa[rank] for rank in RANKS], 1)
    answered = answer < len(RANKS)
    position = np.minimum(answer, len(RANKS) - 1)
    right = answered & (given[rows, position] == truth[rows, position])
    figures = {rank: float(np.mean(answer == i)) for i, rank in enumerate(RANKS)}
    figures["wrong"] = float(np.mean(answered & ~right)) if len(answer) else 0.0
    depth = np.where(right, len(RANKS) - position, 0)
    figures["depth"] = float(depth.mean()) if len(answer) else 0.0
    return figures


def settings_of(meta: dict[str, Any], batch_size: int = 64) -> CalibrationConfig:
    """The calibration settings a model was calibrated with, read back from its metadata."""
    unknown, calibration = meta.get("unknown") or {}, meta.get("calibration") or {}
    if not unknown:
        raise JianmuError("the model was never calibrated: no unknown-species rule to refit")
    ranks = meta.get("ranks") or {}
    return CalibrationConfig(
        rule=unknown["rule"],
        target_known_recall=float(unknown["target_known_recall"]),
        tta=int(calibration.get("views", 1)) > 1,
        max_wrong_rate=float(ranks.get("max_wrong_rate", 1.0)),
        batch_size=batch_size,
    )


def fit_statistics(train: Outputs) -> FeatureStatistics:
    """Class Gaussians (shared covariance), one background Gaussian and the kNN bank."""
    everything = np.zeros(len(train.targets), dtype=int)
    return FeatureStatistics(
        fit_mahalanobis(train.embeddings, train.targets, ridge=MAHALANOBIS_RIDGE),
        fit_mahalanobis(train.embeddings, everything, ridge=MAHALANOBIS_RIDGE),
        fit_knn(train.embeddings),
    )


def fit_thresholds(
    statistics: FeatureStatistics, known: Outputs, temperature: float, target_recall: float
) -> dict[str, float]:
    """Each rule's threshold for ``target_recall`` of ``known`` (images of known species)."""
    return {
        rule: threshold_for_recall(
            statistics.score(rule, known.logits, known.embeddings, temperature), target_recall
        )
        for rule in statistics.rules()
    }


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature T in ``bounds`` minimising the NLL of ``softmax(logits / T)``.

    The search runs over log T (bounded Brent, deterministic). T > 1 softens an over-confident
    model. On perfectly separated data the NLL keeps falling as T shrinks, so T ends up small.
    """
    logits, targets = as_scores_and_targets(logits, targets)
    if not 0 < bounds[0] < bounds[1]:
        raise JianmuError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    rows = np.arange(len(targets))

    def nll(log_temperature: float) -> float:
        log_probabilities = log_softmax(logits / np.exp(log_temperature), axis=1)
        return float(-log_probabilities[rows, targets].mean())

    result = minimize_scalar(
        nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(result.x))


def fit_mahalanobis(
    features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3
) -> MahalanobisModel:
    """Class means and a shared covariance of ``features``, inverted into a precision matrix.

    Args:
        ridge: Added to the covariance diagonal, relative to the mean feature variance, so that
            fewer samples than dimensions still give a usable precision matrix.
    """
    features = as_matrix(features, "features")
    targets = np.asarray(targets)
    if targets.shape != (len(features),):
        raise JianmuError(f"{len(targets)} targets for {len(features)} feature rows")
    if len(features) == 0:
        raise JianmuError("no features to fit on")
    classes, index = np.unique(targets, return_inverse=True)
    index = index.reshape(-1)
    means = np.stack([features[index == i].mean(axis=0) for i in range(len(classes))])
    centered = features - means[index]
    covariance = centered.T @ centered / len(features)
    scale = np.trace(covariance) / len(covariance) or 1.0
    covariance += ridge * scale * np.eye(len(covariance))
    return MahalanobisModel(means, np.linalg.pinv(covariance, hermitian=True))


def fit_knn(features: np.ndarray) -> KnnModel:
    """Keep the L2-normalised training embeddings (float32 stays float32)."""
    features = as_matrix(features, "features", keep_float32=True)
    if len(features) == 0:
        raise JianmuError("no features to fit on")
    return KnnModel(l2_normalize(features))


def threshold_for_recall(scores_known: np.ndarray, target_recall: float) -> float:
    """A threshold t with at least ``target_recall`` of the known scores >= t.

    On the scores it was fit on, accepting ``score >= t`` keeps at least the target recall (more
    when scores tie). t lies halfway between the last score kept and the next one below it, so
    that the tiny differences between devices (fp32 on a GPU where training calibrated, on a CPU
    where a bundle predicts) do not move an image across it. With every score needed
    (``target_recall=1``), t lies as far below the lowest score as halfway to the next one up.
    """
    scores = as_vector(scores_known, "known scores")
    if not 0 < target_recall <= 1:
        raise JianmuError(f"target recall must be in (0, 1], got {target_recall}")
    # Smallest count m with m / n >= target, using the same division a recall check does
    # (a plain ceil(0.7 * 10) gives 8).
    fractions = np.arange(1, len(scores) + 1) / len(scores)
    needed = int(np.searchsorted(fractions, target_recall, side="left")) + 1
    ordered = np.sort(scores)[::-1]
    if needed < len(ordered):
        return float((ordered[needed - 1] + ordered[needed]) / 2)
    margin = (ordered[-2] - ordered[-1]) / 2 if len(ordered) > 1 else 0.0
    return float(ordered[-1] - margin)


def seeded_subset(items: Sequence[Any], limit: int, seed: int = 0) -> list[Any]:
    """At most ``limit`` of ``items``, drawn with ``seed``, in their original order."""
    if len(items) <= limit:
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def _readable(outputs: Outputs, what: str) -> Outputs:
    readable = outputs.readable()
    if not len(readable.targets):
        raise JianmuError(f"no readable {what} image to calibrate on")
    return readable
