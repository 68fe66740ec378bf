"""The verdict words, the one specimen roll-up at the deepest rank, and declarations, by hand."""

import numpy as np
import pytest

from jianmu.verdict import (
    CANNOT_DECIDE,
    CONSISTENT,
    IDENTIFIED,
    INCONSISTENT,
    UNKNOWN,
    Lineages,
    SpecimenRollup,
    answer_is_wrong,
    declaration_decision,
    deepest_answer,
    image_verdict,
    other_share,
    rank_verdict,
    taxon_label,
    top_k,
)

CLASSES = ["a", "b", "c"]
# Two Dalbergia, one Senna (all Fabaceae) and one Diospyros (Ebenaceae).
WOOD = ["D_stev", "D_tuc", "Senna", "Dios"]
LINEAGE = [
    {"species": "Dalbergia stevensonii", "genus": "Dalbergia", "family": "Fabaceae"},
    {"species": "Dalbergia tucurensis", "genus": "Dalbergia", "family": "Fabaceae"},
    {"species": "Senna siamea", "genus": "Senna", "family": "Fabaceae"},
    {"species": "Diospyros crassiflora", "genus": "Diospyros", "family": "Ebenaceae"},
]


def test_words_top_k_and_other_share():
    assert image_verdict(True) == IDENTIFIED and image_verdict(False) == UNKNOWN
    assert rank_verdict("species") == IDENTIFIED and rank_verdict("genus") == UNKNOWN
    assert rank_verdict(None) is None
    assert taxon_label("genus", "Dalbergia") == "Dalbergia sp."
    assert taxon_label("family", "Fabaceae") == "Fabaceae" and taxon_label("unknown", None) is None
    assert top_k(np.array([0.2, 0.5, 0.2, 0.1]), 3).tolist() == [1, 0, 2]  # ties: lower index
    assert other_share([0.5, 0.3]) == 0.2
    assert other_share([0.7, 0.3000001]) == 0.0  # never negative


def test_shares_are_the_mean_of_the_top_k_of_readable_images():
    rollup = SpecimenRollup(CLASSES, top_k=2)
    rollup.add("s", [("a", 0.6), ("b", 0.3)], "species", "a")
    rollup.add("s", [("b", 0.5), ("c", 0.4)], "species", "b")  # 'a' outside its top-2: counts 0
    rollup.add("s", [], None)  # unreadable: counted, not averaged
    (specimen,) = rollup.results()
    assert (specimen.images, specimen.ok_images) == (3, 2)
    # a: 0.6 / 2; b: (0.3 + 0.5) / 2; c: 0.4 / 2 -> b 0.4, a 0.3 (c dropped: top-2)
    assert specimen.top == [("b", pytest.approx(0.4)), ("a", pytest.approx(0.3))]
    assert specimen.other == pytest.approx(0.3)
    # one of two readable images is identified as 'b': not more than half -> the lab
    assert specimen.verdict == UNKNOWN and specimen.rank == "unknown"


@pytest.mark.parametrize(
    ("images", "verdict"),
    [
        ([("a", "species")] * 2 + [("a", "unknown")], IDENTIFIED),  # 2 of 3 agree
        ([("a", "species"), ("b", "species")], UNKNOWN),  # a tie goes to the lab
        ([("a", "species")] + [("a", "unknown")] * 2, UNKNOWN),  # too many unknowns
        ([("a", "species")], IDENTIFIED),
    ],
)
def test_a_specimen_is_identified_by_a_majority_that_agrees(images, verdict):
    rollup = SpecimenRollup(CLASSES, top_k=1)
    for best, rank in images:
        rollup.add("s", [(best, 0.8)], rank, best if rank == "species" else None)
    assert rollup.results()[0].verdict == verdict


def test_a_specimen_answers_at_the_deepest_rank_its_photos_agree_on():
    rollup = SpecimenRollup(WOOD, top_k=2, lineage=LINEAGE)
    # three photos of one piece: two species answers that disagree within Dalbergia, one genus
    rollup.add("x", [("D_stev", 0.6), ("D_tuc", 0.3)], "species", "Dalbergia stevensonii")
    rollup.add("x", [("D_tuc", 0.5), ("D_stev", 0.4)], "species", "Dalbergia tucurensis")
    rollup.add("x", [("D_tuc", 0.5), ("Senna", 0.3)], "genus", "Dalbergia")
    # another: two photos at family rank, one unknown
    rollup.add("y", [("Senna", 0.4), ("D_stev", 0.3)], "family", "Fabaceae")
    rollup.add("y", [("D_tuc", 0.4), ("Senna", 0.3)], "family", "Fabaceae")
    rollup.add("y", [("Dios", 0.5), ("Senna", 0.2)], "unknown", None)
    x, y = rollup.results()
    assert (x.rank, x.taxon) == ("genus", "Dalbergia")  # 1 of 3 per species, 3 of 3 Dalbergia
    assert (y.rank, y.taxon, y.verdict) == ("family", "Fabaceae", UNKNOWN)  # 2 of 3 Fabaceae


def test_a_specimen_is_not_answered_at_a_rank_the_model_cannot_answer():
    flies = ["B_dor", "B_try", "Trupanea"]  # one family: the family rank says nothing
    lineage = [
        {"species": "Bactrocera dorsalis", "genus": "Bactrocera", "family": "Tephritidae"},
        {"species": "Bactrocera tryoni", "genus": "Bactrocera", "family": "Tephritidae"},
        {"species": "Trupanea sp1", "genus": "Trupanea", "family": "Tephritidae"},
    ]
    rollup = SpecimenRollup(flies, top_k=2, lineage=lineage)
    # two photos that agree on the family only
    rollup.add("z", [("B_dor", 0.5), ("Trupanea", 0.3)], "genus", "Bactrocera")
    rollup.add("z", [("Trupanea", 0.6), ("B_try", 0.2)], "genus", "Trupanea")
    (z,) = rollup.results()
    assert (z.rank, z.taxon) == ("unknown", None)
    with_family = SpecimenRollup([*flies, "Dios"], top_k=2, lineage=[*lineage, LINEAGE[3]])
    for photo in (("B_dor", "Bactrocera"), ("Trupanea", "Trupanea")):
        with_family.add("z", [(photo[0], 0.6)], "genus", photo[1])
    assert (with_family.results()[0].rank, with_family.results()[0].taxon) == (
        "family",
        "Tephritidae",
    )


def test_order_ties_and_images_of_no_specimen():
    rollup = SpecimenRollup(CLASSES, top_k=3)
    rollup.add("second", [("c", 0.5), ("b", 0.5)], "species", "c")  # tie: class order decides
    rollup.add("first-seen-later", [], None)
    rollup.add(None, [("a", 1.0)], "species", "a")  # its own specimen: not rolled up
    results = rollup.results()
    assert [s.specimen for s in results] == ["second", "first-seen-later"] and len(rollup) == 2
    assert [name for name, _ in results[0].top] == ["b", "c"]
    assert results[1].verdict is None and results[1].top == [] and results[1].other is None


def test_wrong_answers_and_the_deepest_answer_a_model_could_give():
    lineages = Lineages(WOOD, LINEAGE)
    pterocarpus = {"species": "Pterocarpus indicus", "genus": "Pterocarpus", "family": "Fabaceae"}
    unseen_dalbergia = {"species": "Dalbergia nigra", "genus": "Dalbergia", "family": "Fabaceae"}
    teak = {"species": "Tectona grandis", "genus": "Tectona", "family": "Lamiaceae"}
    assert deepest_answer(LINEAGE[0], lineages) == ("species", "Dalbergia stevensonii")
    assert deepest_answer(unseen_dalbergia, lineages) == ("genus", "Dalbergia")
    assert deepest_answer(pterocarpus, lineages) == ("family", "Fabaceae")
    assert deepest_answer(teak, lineages) == ("unknown", None)
    assert answer_is_wrong("species", "Dalbergia stevensonii", unseen_dalbergia, lineages)
    assert not answer_is_wrong("genus", "Dalbergia", unseen_dalbergia, lineages)
    assert answer_is_wrong("genus", "Senna", pterocarpus, lineages)
    assert not answer_is_wrong("family", "Fabaceae", pterocarpus, lineages)
    assert not answer_is_wrong("unknown", None, teak, lineages)


@pytest.mark.parametrize(
    ("answer", "declared", "decision"),
    [
        (("species", "Dalbergia stevensonii"), ("species", LINEAGE[0]), CONSISTENT),
        (("species", "Dalbergia tucurensis"), ("species", LINEAGE[0]), INCONSISTENT),
        (("genus", "Dalbergia"), ("species", LINEAGE[0]), CANNOT_DECIDE),  # genus only: lab
        (("genus", "Senna"), ("species", LINEAGE[0]), INCONSISTENT),
        (("family", "Fabaceae"), ("species", LINEAGE[0]), CANNOT_DECIDE),
        (("family", "Ebenaceae"), ("species", LINEAGE[0]), INCONSISTENT),
        (("unknown", None), ("species", LINEAGE[0]), CANNOT_DECIDE),
        (("species", "Dalbergia tucurensis"), ("genus", {"genus": "Dalbergia"}), CONSISTENT),
        (("genus", "Dalbergia"), ("genus", {"genus": "Dalbergia", "family": "Fabaceae"}),
         CONSISTENT),
        (("species", "Senna siamea"), ("genus", {"genus": "Dalbergia", "family": "Fabaceae"}),
         INCONSISTENT),
        (("species", "Senna siamea"), ("family", {"family": "Fabaceae"}), CONSISTENT),
        # a species the model does not know, declared: any other species answer contradicts it
        (("species", "Dalbergia stevensonii"),
         ("species", {"species": "Dalbergia nigra", "genus": "Dalbergia", "family": "Fabaceae"}),
         INCONSISTENT),
        ((None, None), ("species", LINEAGE[0]), CANNOT_DECIDE),  # no readable photo
    ],
)  # fmt: skip
def test_declarations_are_borne_out_contradicted_or_left_to_the_lab(answer, declared, decision):
    lineages = Lineages(WOOD, LINEAGE)
    rank, taxon = answer
    declared_rank, truth = declared
    found, reason = declaration_decision(rank, taxon, truth, declared_rank, lineages)
    assert found == decision and reason
    if decision == INCONSISTENT:
        assert reason.startswith("looks like")
