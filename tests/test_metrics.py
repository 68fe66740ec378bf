"""Metrics against hand-computed values on tiny arrays."""

import json
import math

import numpy as np
import pytest

from jianmu.errors import JianmuError
from jianmu.metrics import (
    auroc_known_vs_unknown,
    classification_report,
    confusion,
    expected_calibration_error,
    group_accuracy,
    macro_f1,
    most_confused_pairs,
    open_set_report,
    reliability_bins,
    topk_accuracy,
    within_group_errors,
)

# Four samples, three classes. argmax -> predictions [0, 0, 2, 2]; targets [0, 1, 2, 1].
PROBABILITIES = np.array(
    [
        [0.6, 0.3, 0.1],  # target 0: top1 hit
        [0.5, 0.4, 0.1],  # target 1: top1 miss (predicts 0), top2 hit
        [0.2, 0.3, 0.5],  # target 2: top1 hit
        [0.1, 0.2, 0.7],  # target 1: top1 miss (predicts 2), top2 hit
    ]
)
TARGETS = np.array([0, 1, 2, 1])
PREDICTIONS = np.array([0, 0, 2, 2])


def test_topk_accuracy_and_macro_f1_keep_their_behaviour():
    assert topk_accuracy(PROBABILITIES, TARGETS, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(PROBABILITIES, TARGETS, 2) == 1.0
    assert topk_accuracy(PROBABILITIES, TARGETS, 5) == 1.0  # k capped at 3 classes
    assert math.isnan(topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))
    # per-class F1: class 0 2/3, class 1 0, class 2 2/3 -> mean 4/9
    assert macro_f1(PREDICTIONS, TARGETS) == pytest.approx(4 / 9)


def test_classification_report_by_hand():
    report = classification_report(PROBABILITIES, TARGETS, ["a", "b", "c"])
    assert report["count"] == 4
    # ks (1, 2, 3, 5): 5 is capped at 3 classes and merged with 3
    assert [key for key in report if key.startswith("top")] == ["top1", "top2", "top3"]
    assert report["top1"] == 0.5  # 2 of 4
    assert report["top2"] == 1.0  # rows 1 and 3 have the target second
    assert report["top3"] == 1.0
    # class a: predicted twice, 1 right -> P 1/2, R 1/1, F1 2*(1/2)(1)/(3/2) = 2/3, support 1
    # class b: never predicted -> P 0,   R 0/2,  F1 0,                        support 2
    # class c: predicted twice, 1 right -> P 1/2, R 1/1, F1 2/3,               support 1
    assert report["per_class"] == [
        {"class": "a", "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
        {"class": "c", "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
    ]
    # balanced accuracy = mean recall = (1 + 0 + 1) / 3
    assert report["balanced_accuracy"] == pytest.approx(2 / 3)
    # macro: P (1/2 + 0 + 1/2) / 3 = 1/3, R (1 + 0 + 1) / 3 = 2/3, F1 (2/3 + 0 + 2/3) / 3 = 4/9
    assert report["macro_precision"] == pytest.approx(1 / 3)
    assert report["macro_recall"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(4 / 9)
    # weighted by support 1, 2, 1 of 4: P (1/2 + 0 + 1/2) / 4 = 1/4, R (1 + 0 + 1) / 4 = 1/2,
    # F1 (2/3 + 0 + 2/3) / 4 = 1/3
    assert report["weighted_precision"] == pytest.approx(1 / 4)
    assert report["weighted_recall"] == pytest.approx(1 / 2)
    assert report["weighted_f1"] == pytest.approx(1 / 3)
    json.dumps(report, allow_nan=False)


def test_classification_report_ignores_absent_class_in_macro_averages():
    # A fourth class with no samples and no predictions: support 0, left out of the macro mean,
    # so macro F1 stays 4/9 and agrees with macro_f1().
    four = np.hstack([PROBABILITIES, np.zeros((4, 1))])
    report = classification_report(four, TARGETS, ["a", "b", "c", "d"], ks=(1, 10))
    assert [key for key in report if key.startswith("top")] == ["top1", "top4"]
    assert report["per_class"][3] == {
        "class": "d",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert report["macro_f1"] == pytest.approx(4 / 9)
    assert report["macro_f1"] == pytest.approx(macro_f1(PREDICTIONS, TARGETS))
    assert report["balanced_accuracy"] == pytest.approx(2 / 3)


def test_classification_report_rejects_bad_input():
    with pytest.raises(JianmuError, match="class names"):
        classification_report(PROBABILITIES, TARGETS, ["a", "b"])
    with pytest.raises(JianmuError, match="targets"):
        classification_report(PROBABILITIES, TARGETS[:3], ["a", "b", "c"])
    with pytest.raises(JianmuError, match="class indices"):
        classification_report(PROBABILITIES, np.array([0, 1, 2, 3]), ["a", "b", "c"])
    with pytest.raises(JianmuError, match="no samples"):
        classification_report(np.zeros((0, 3)), np.zeros(0, dtype=int), ["a", "b", "c"])


def test_confusion_counts_and_row_normalisation():
    # true 0 -> 0; true 1 -> 0 and 2; true 2 -> 2; class 3 has no samples
    counts = confusion(PREDICTIONS, TARGETS, num_classes=4)
    assert counts.tolist() == [[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    rates = confusion(PREDICTIONS, TARGETS, num_classes=4, normalize=True)
    assert rates.tolist() == [[1, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert confusion(np.array([], dtype=int), np.array([], dtype=int), 2).tolist() == [
        [0, 0],
        [0, 0],
    ]
    with pytest.raises(JianmuError, match="class indices"):
        confusion(np.array([0, 5]), np.array([0, 1]), num_classes=2)


def test_most_confused_pairs_sorted_off_diagonal_nonzero():
    counts = np.array([[5, 2, 0], [3, 4, 1], [0, 2, 6]])
    # off-diagonal non-zero: a->b 2, b->a 3, b->c 1, c->b 2; ties keep row-major order
    assert most_confused_pairs(counts, ["a", "b", "c"]) == [
        ("b", "a", 3),
        ("a", "b", 2),
        ("c", "b", 2),
        ("b", "c", 1),
    ]
    assert most_confused_pairs(counts, ["a", "b", "c"], top=2) == [("b", "a", 3), ("a", "b", 2)]
    assert most_confused_pairs(np.eye(2, dtype=int), ["a", "b"]) == []
    assert all(type(count) is int for _, _, count in most_confused_pairs(counts, ["a", "b", "c"]))


def test_group_accuracy_and_within_group_errors():
    genus = ["Pinus", "Pinus", "Quercus", "Quercus"]
    targets = np.array([0, 1, 2, 3, 0])
    predictions = np.array([0, 0, 3, 1, 2])
    # row 0 right; rows 1 (1->0) and 2 (2->3) wrong species, right genus;
    # rows 3 (Quercus->Pinus) and 4 (Pinus->Quercus) wrong genus
    assert group_accuracy(predictions, targets, genus) == pytest.approx(3 / 5)
    assert within_group_errors(predictions, targets, genus) == 2
    # species accuracy 1/5 + within-genus errors 2/5 = genus accuracy 3/5
    species = float(np.mean(predictions == targets))
    assert species + 2 / 5 == pytest.approx(group_accuracy(predictions, targets, genus))
    with pytest.raises(JianmuError, match="class indices"):
        group_accuracy(np.array([4]), np.array([0]), genus)


def test_reliability_bins_and_ece_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.55, 0.45]])
    targets = np.array([0, 1, 1, 1])
    # bins of width 0.2: (0.8, 1] holds 0.9 (right) and 0.95 (wrong): acc 1/2, conf 0.925
    #                    (0.6, 0.8] holds 0.7 (right):                  acc 1,   conf 0.7
    #                    (0.4, 0.6] holds 0.55 (wrong):                 acc 0,   conf 0.55
    rows = reliability_bins(probabilities, targets, bins=5)
    assert [row["count"] for row in rows] == [0, 0, 1, 1, 2]
    assert rows[0] == {"lower": 0.0, "upper": 0.2, "count": 0, "accuracy": None, "confidence": None}
    assert rows[4]["lower"] == 0.8 and rows[4]["upper"] == 1.0
    assert rows[4]["accuracy"] == 0.5 and rows[4]["confidence"] == pytest.approx(0.925)
    assert rows[3]["accuracy"] == 1.0 and rows[3]["confidence"] == pytest.approx(0.7)
    assert rows[2]["accuracy"] == 0.0 and rows[2]["confidence"] == pytest.approx(0.55)
    # ECE = 2/4 * |0.5 - 0.925| + 1/4 * |1 - 0.7| + 1/4 * |0 - 0.55|
    #     = 0.2125 + 0.075 + 0.1375 = 0.425
    ece = expected_calibration_error(probabilities, targets, bins=5)
    assert ece == pytest.approx(0.425)
    json.dumps(rows, allow_nan=False)


def test_reliability_bins_are_closed_on_the_right():
    # 0.8 belongs to (0.6, 0.8], 0.7 to (0.6, 0.7] with ten bins, 1.0 to the last bin
    assert [r["count"] for r in reliability_bins(np.array([[0.8, 0.2]]), [0], bins=5)][3] == 1
    assert [r["count"] for r in reliability_bins(np.array([[0.7, 0.3]]), [0], bins=10)][6] == 1
    assert reliability_bins(np.array([[1.0, 0.0]]), [0], bins=5)[4]["count"] == 1
    # perfectly calibrated: confidence 0.75 and 3 of 4 right -> ECE 0
    probabilities = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) == pytest.approx(0)


def test_calibration_rejects_logits():
    with pytest.raises(JianmuError, match="softmax"):
        expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))


def test_auroc_known_vs_unknown():
    # pairs known > unknown: .9>.5 .9>.1 .8>.5 .8>.1 .4>.1 (not .4>.5) -> 5 of 6
    auroc = auroc_known_vs_unknown(np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.1]))
    assert auroc == pytest.approx(5 / 6)
    assert auroc_known_vs_unknown(np.array([0.5]), np.array([0.5])) == 0.5  # a tie counts half
    with pytest.raises(JianmuError, match="unknown scores"):
        auroc_known_vs_unknown(np.array([0.5]), np.array([]))


def test_open_set_report_by_hand():
    report = open_set_report(np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.1]), threshold=0.45)
    assert report["known_recall"] == pytest.approx(2 / 3)  # .9 and .8 >= .45
    assert report["unknown_rejection"] == 0.5  # only .1 < .45
    assert report["balanced_recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12
    assert report["auroc"] == pytest.approx(5 / 6)
    assert report["known_count"] == 3 and report["unknown_count"] == 2
    # a score equal to the threshold counts as known
    exact = open_set_report(np.array([0.45]), np.array([0.45]), threshold=0.45)
    assert exact["known_recall"] == 1.0 and exact["unknown_rejection"] == 0.0
    json.dumps(report, allow_nan=False)
