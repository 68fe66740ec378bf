"""Calibration, fitted and applied, against hand-computed values on tiny arrays."""

import math
from pathlib import Path

import numpy as np
import pytest

from jianmu.calibration import scores
from jianmu.calibration.apply import Calibrator
from jianmu.calibration.fit import (
    calibrate,
    fit_knn,
    fit_mahalanobis,
    fit_temperature,
    settings_of,
    threshold_for_recall,
)
from jianmu.calibration.scores import (
    RULES,
    FeatureStatistics,
    score_energy,
    score_knn,
    score_mahalanobis,
    score_msp,
    softmax,
)
from jianmu.config import CalibrationConfig
from jianmu.errors import JianmuError
from jianmu.metrics import expected_calibration_error
from jianmu.outputs import Outputs


def test_softmax_is_stable_and_honours_temperature():
    # exp(0) : exp(ln 3) = 1 : 3 -> [1/4, 3/4]
    expected = [[0.25, 0.75]]
    assert softmax(np.array([[0.0, math.log(3)]])) == pytest.approx(np.array(expected))
    assert softmax(np.array([[1000.0, 1000.0 + math.log(3)]])) == pytest.approx(np.array(expected))
    # (0, 2 ln 3) / 2 = (0, ln 3)
    halved = softmax(np.array([[0.0, 2 * math.log(3)]]), temperature=2.0)
    assert halved == pytest.approx(np.array(expected))
    assert softmax(np.array([1.0, 1.0])) == pytest.approx(np.array([0.5, 0.5]))
    with pytest.raises(JianmuError, match="temperature"):
        softmax(np.zeros((1, 2)), temperature=0)


def _calibrated_toy(seed: int = 0, count: int = 2000, num_classes: int = 4):
    """Logits whose softmax is the true label distribution, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(count, num_classes))
    cumulative = softmax(logits).cumsum(axis=1)
    targets = (cumulative < rng.random(count)[:, None]).sum(axis=1).clip(max=num_classes - 1)
    return logits, targets


def test_fit_temperature_undoes_over_confidence():
    logits, targets = _calibrated_toy()
    over_confident = 5 * logits
    temperature = fit_temperature(over_confident, targets)
    assert temperature > 1
    assert 3.5 < temperature < 7  # ideally 5
    before = expected_calibration_error(softmax(over_confident), targets)
    after = expected_calibration_error(softmax(over_confident, temperature), targets)
    assert after < before
    assert fit_temperature(over_confident, targets) == temperature  # deterministic


def test_fit_temperature_finds_the_nll_minimum():
    logits, targets = _calibrated_toy(seed=1, count=500)
    under_confident = logits / 3
    temperature = fit_temperature(under_confident, targets)
    assert temperature < 1

    def nll(t):
        probabilities = softmax(under_confident, t)
        return -np.log(probabilities[np.arange(len(targets)), targets]).mean()

    assert nll(temperature) <= min(nll(temperature * 1.05), nll(temperature / 1.05))


def test_score_msp_and_energy():
    logits = np.array([[0.0, math.log(3)], [0.0, 0.0]])
    assert score_msp(logits) == pytest.approx(np.array([0.75, 0.5]))
    # logsumexp: ln(1 + 3) = ln 4 and ln(1 + 1) = ln 2
    assert score_energy(logits) == pytest.approx(np.array([math.log(4), math.log(2)]))
    # T = 2: 2 * ln(exp(0) + exp(2 ln 3 / 2)) = 2 ln 4
    energy = score_energy(np.array([[0.0, 2 * math.log(3)]]), temperature=2.0)
    assert energy == pytest.approx(np.array([2 * math.log(4)]))


def test_mahalanobis_by_hand():
    # class 0 around (0, 0), class 1 around (10, 0); within-class spread 1 along x, 2 along y
    features = np.array(
        [[-1, 0], [1, 0], [0, -2], [0, 2], [9, 0], [11, 0], [10, -2], [10, 2]], dtype=float
    )
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    model = fit_mahalanobis(features, targets, ridge=0.0)
    # covariance: x (1 + 1) * 2 / 8 = 0.5, y (4 + 4) * 2 / 8 = 2 -> precision diag(2, 0.5)
    assert model.means == pytest.approx(np.array([[0.0, 0.0], [10.0, 0.0]]))
    assert model.precision == pytest.approx(np.diag([2.0, 0.5]))
    queries = np.array([[0, 0], [3, 0], [0, 4], [5, 0]], dtype=float)
    # (3, 0): sqrt(9 * 2) = sqrt 18;  (0, 4): sqrt(16 * 0.5) = sqrt 8, so the point farther away
    # in plain distance is closer along the spread; (5, 0): sqrt(25 * 2) to both means
    expected = -np.sqrt([0.0, 18.0, 8.0, 50.0])
    assert score_mahalanobis(model, queries) == pytest.approx(expected)
    stored = FeatureStatistics(model, None, None).as_stored()  # the float32 round trip
    assert score_mahalanobis(stored.mahalanobis, queries) == pytest.approx(expected, rel=1e-6)


def test_mahalanobis_ridge_handles_singular_covariance():
    # all on the x axis: y variance 0, so only the ridge keeps the precision finite
    features = np.array([[0, 0], [2, 0], [10, 0], [12, 0]], dtype=float)
    model = fit_mahalanobis(features, np.array([0, 0, 1, 1]))
    scores = score_mahalanobis(model, np.array([[1, 0], [1, 1]], dtype=float))
    assert np.isfinite(scores).all()
    assert scores[0] == pytest.approx(0, abs=1e-9)
    assert scores[1] < -10  # off the axis is very unusual


def test_knn_by_hand():
    # normalised bank: (1, 0), (0, 1), (1, 0)
    model = fit_knn(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]))
    queries = np.array([[3.0, 0.0], [1.0, 1.0]])
    # (3, 0) -> (1, 0): distances 0, sqrt 2, 0
    # (1, 1) -> (1, 1)/sqrt 2: every distance sqrt(2 - 2 / sqrt 2) = sqrt(2 - sqrt 2)
    diagonal = -math.sqrt(2 - math.sqrt(2))
    assert score_knn(model, queries, k=1) == pytest.approx(np.array([0, diagonal]), abs=1e-12)
    assert score_knn(model, queries, k=2) == pytest.approx(np.array([0, diagonal]), abs=1e-12)
    expected = np.array([-math.sqrt(2), diagonal])
    assert score_knn(model, queries, k=3) == pytest.approx(expected)
    stored = FeatureStatistics(None, None, model).as_stored()
    assert score_knn(stored.knn, queries, k=3) == pytest.approx(expected)
    with pytest.raises(JianmuError, match="k must be"):
        score_knn(model, queries, k=4)


def test_knn_chunking_gives_the_same_scores(monkeypatch):
    rng = np.random.default_rng(0)
    model = fit_knn(rng.normal(size=(7, 3)))
    queries = rng.normal(size=(5, 3))
    whole = score_knn(model, queries, k=2)
    monkeypatch.setattr(scores, "_CHUNK_ELEMENTS", 8)  # one query row per block
    assert score_knn(model, queries, k=2) == pytest.approx(whole)


def test_threshold_for_recall_by_hand():
    # halfway between the last score kept and the next one down: robust to tiny differences
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9])  # descending: .9 .8 .4 .35 .1
    assert threshold_for_recall(scores, 0.6) == pytest.approx(0.375)  # 3 of 5: keep .4, not .35
    assert threshold_for_recall(scores, 0.61) == pytest.approx(0.225)  # 3.05 -> 4 of 5 needed
    assert threshold_for_recall(scores, 1.0) == pytest.approx(-0.025)  # all: below the minimum
    assert threshold_for_recall(scores, 0.01) == pytest.approx(0.85)  # one needed
    # 0.7 * 10 is 7.000000000000001 in floating point, yet 7 of 10 is enough
    assert threshold_for_recall(np.arange(10.0), 0.7) == 2.5
    # ties: 2 of 4 needed; t = 0.5 keeps 3 of 4, and any t above 0.5 keeps none
    assert threshold_for_recall(np.array([0.5, 0.5, 0.5, 0.2]), 0.5) == 0.5


@pytest.mark.parametrize("seed", range(10))
def test_threshold_for_recall_keeps_the_fewest_images_that_reach_the_target(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, size=rng.integers(1, 40)).astype(float)  # many ties
    for target in (0.05, 0.5, 0.7, 0.9, 0.95, 1.0, rng.random()):
        threshold = threshold_for_recall(scores, target)
        assert np.mean(scores >= threshold) >= target
        kept = scores[scores >= threshold]
        above = scores[scores > kept.min()]
        if len(above):  # keeping one distinct score fewer would miss the target
            assert np.mean(scores >= above.min()) < target
        below = scores[scores < threshold]
        if len(below) and threshold not in scores:  # halfway to the next score down
            assert threshold == pytest.approx((below.max() + kept.min()) / 2)
        elif len(below):  # on a score only when that score is tied with the next one down
            assert np.sum(scores == threshold) >= 2


def test_threshold_for_recall_rejects_bad_targets():
    for target in (0.0, -0.1, 1.5):
        with pytest.raises(JianmuError, match="target recall"):
            threshold_for_recall(np.array([0.5]), target)
    with pytest.raises(JianmuError, match="non-empty"):
        threshold_for_recall(np.array([]), 0.9)


# --- the one fitting procedure --------------------------------------------------------------------


def _fake_run(seed: int = 0, unreadable: int = 0):
    """``run(items, views)`` of a model whose embeddings cluster by class, with more spread for
    one view than for the 8-view average; the first ``unreadable`` items cannot be read."""
    calls = []

    def run(items, views):
        calls.append((len(items), views))
        rng = np.random.default_rng(seed + views)
        targets = np.array([label for _, label in items])
        centres = np.eye(3, 6) * 6
        embeddings = centres[targets] + rng.normal(scale=1.0 / views, size=(len(items), 6))
        logits = embeddings[:, :3] * 2
        ok = np.ones(len(items), dtype=bool)
        ok[:unreadable] = False
        logits[~ok], embeddings[~ok] = 0, 0
        return Outputs(logits.astype(np.float32), embeddings.astype(np.float32), targets, ok)

    return run, calls


def _items(count: int) -> list:
    return [(Path(f"{i}.jpg"), i % 3) for i in range(count)]


@pytest.mark.parametrize("tta", [False, True])
def test_calibrate_fits_temperature_statistics_and_thresholds_for_each_view_count(tta):
    run, calls = _fake_run()
    items = {"train": _items(60), "val": _items(40)}
    config = CalibrationConfig(tta=tta, target_known_recall=0.9)
    fitted = calibrate(run, items, config, seed=0)
    calibration, unknown = fitted.record["calibration"], fitted.record["unknown"]
    views = 8 if tta else 1
    assert calibration["views"] == views and unknown["rule"] == "relative_mahalanobis"
    assert calls[:2] == [(60, views), (40, views)]
    assert ("single_view" in calibration) == tta  # one view gets its own fit beside TTA's
    assert set(unknown["thresholds"]) == set(RULES)
    meta = {"classes": ["a", "b", "c"], **fitted.record}
    calibrator = Calibrator(meta, FeatureStatistics.from_arrays(fitted.statistics.to_arrays()))
    for view_count in {1, views}:
        val = run(items["val"], view_count)
        prediction = calibrator.apply(val.logits, val.embeddings, view_count)
        assert prediction.known.mean() >= 0.9  # the promise, on the statistics as stored
        assert calibrator.calibration(view_count).exact
    assert settings_of(meta) == config.model_copy(update={"batch_size": 64, "max_wrong_rate": 1.0})


def test_calibrate_drops_unreadable_images_and_refuses_when_none_is_left():
    run, _ = _fake_run(unreadable=5)
    fitted = calibrate(run, {"train": _items(60), "val": _items(40)}, CalibrationConfig())
    assert fitted.statistics.mahalanobis.means.shape == (3, 6)
    none_left, _ = _fake_run(unreadable=40)
    with pytest.raises(JianmuError, match="no readable validation image"):
        calibrate(none_left, {"train": _items(60), "val": _items(40)}, CalibrationConfig())


def test_an_uncalibrated_model_identifies_everything_with_plain_softmax():
    calibrator = Calibrator({"classes": ["a", "b"]}, None)
    prediction = calibrator.apply(np.array([[0.0, math.log(3)]]), np.zeros((1, 2)))
    assert prediction.known.all() and np.isnan(prediction.scores).all()
    assert prediction.probabilities == pytest.approx(np.array([[0.25, 0.75]]))
    assert calibrator.calibration(8).rule is None
