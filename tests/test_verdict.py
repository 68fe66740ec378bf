"""The verdict words and the one specimen roll-up, by hand."""

import numpy as np
import pytest

from jianmu.verdict import (
    IDENTIFIED,
    UNKNOWN,
    SpecimenRollup,
    image_verdict,
    other_share,
    top_k,
)

CLASSES = ["a", "b", "c"]


def test_image_verdict_top_k_and_other_share():
    assert image_verdict(True) == IDENTIFIED and image_verdict(False) == UNKNOWN
    assert top_k(np.array([0.2, 0.5, 0.2, 0.1]), 3).tolist() == [1, 0, 2]  # ties: lower index
    assert other_share([0.5, 0.3]) == 0.2
    assert other_share([0.7, 0.3000001]) == 0.0  # never negative


def test_shares_are_the_mean_of_the_top_k_of_readable_images():
    rollup = SpecimenRollup(CLASSES, top_k=2)
    rollup.add("s", [("a", 0.6), ("b", 0.3)], IDENTIFIED)
    rollup.add("s", [("b", 0.5), ("c", 0.4)], IDENTIFIED)  # 'a' is outside its top-2: counts 0
    rollup.add("s", [], None)  # unreadable: counted, not averaged
    (specimen,) = rollup.results()
    assert (specimen.images, specimen.ok_images) == (3, 2)
    # a: 0.6 / 2; b: (0.3 + 0.5) / 2; c: 0.4 / 2 -> b 0.4, a 0.3 (c dropped: top-2)
    assert specimen.top == [("b", pytest.approx(0.4)), ("a", pytest.approx(0.3))]
    assert specimen.other == pytest.approx(0.3)
    # one of two readable images is identified as 'b': not more than half -> the lab
    assert specimen.verdict == UNKNOWN


@pytest.mark.parametrize(
    ("images", "verdict"),
    [
        ([("a", IDENTIFIED)] * 2 + [("a", UNKNOWN)], IDENTIFIED),  # 2 of 3 agree
        ([("a", IDENTIFIED), ("b", IDENTIFIED)], UNKNOWN),  # a tie goes to the lab
        ([("a", IDENTIFIED)] + [("a", UNKNOWN)] * 2, UNKNOWN),  # too many unknowns
        ([("a", IDENTIFIED)], IDENTIFIED),
    ],
)
def test_a_specimen_is_identified_by_a_majority_that_agrees(images, verdict):
    rollup = SpecimenRollup(CLASSES, top_k=1)
    for best, image in images:
        rollup.add("s", [(best, 0.8)], image)
    assert rollup.results()[0].verdict == verdict


def test_order_ties_and_images_of_no_specimen():
    rollup = SpecimenRollup(CLASSES, top_k=3)
    rollup.add("second", [("c", 0.5), ("b", 0.5)], IDENTIFIED)  # tie: class order decides
    rollup.add("first-seen-later", [], None)
    rollup.add(None, [("a", 1.0)], IDENTIFIED)  # its own specimen: not rolled up
    results = rollup.results()
    assert [s.specimen for s in results] == ["second", "first-seen-later"] and len(rollup) == 2
    assert [name for name, _ in results[0].top] == ["b", "c"]
    assert results[1].verdict is None and results[1].top == [] and results[1].other is None
