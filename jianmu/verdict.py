"""What jianmu answers about an image and about a specimen: the verdict words, the rank and taxon
answered (``Dalbergia stevensonii``, ``Dalbergia sp.``, ``Fabaceae``, unknown), an image's top-k
shares, and the one specimen roll-up that ``jianmu predict`` gives inspectors and ``jianmu eval``
measures.

The specimen rule. A specimen's ``top`` is the mean, over its readable images, of their top-k
calibrated probabilities (a class outside an image's top-k counts 0 for it), ranked by share
(ties: class order). Its answer is at the deepest rank, from species to family, at which more than
half of its readable images agree: the specimen's candidate at a rank is the taxon whose classes
hold the largest mean share, and an image agrees when it was answered at that rank or deeper
*within that taxon*; like the rank rule, it answers only at ranks where the model's classes span
two taxa or more. At the species rank this says: more than half of the readable images are
identified as the specimen's top class. A specimen that agrees at no rank (images that disagree,
too many unknowns, a tie) is ``unknown - refer to lab``; one without a readable image has no
answer. The roll-up needs only what each image record holds, so it can be recomputed from a
predict output file (``--resume`` gives the same roll-up as one uninterrupted run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IDENTIFIED = "identified"
UNKNOWN = "unknown - refer to lab"
VERDICTS = (IDENTIFIED, UNKNOWN)
RANKS = ("species", "genus", "family")
UNKNOWN_RANK = "unknown"
RETAKE = "retake"
"""The ``status`` of a photo that fails the quality gate: readable, not good enough to judge."""
RETAKE_PHOTOS = "retake photos"
"""The verdict of a specimen whose every photo failed the quality gate."""
SPECIMEN_RULE = (
    "a specimen's shares are the mean of its readable images' top-k calibrated shares; it is "
    "answered at the deepest rank at which more than half of those images agree with its top "
    "taxon"
)


def image_verdict(known: bool) -> str:
    """The verdict of a readable image answered at the species rank (or not)."""
    return IDENTIFIED if known else UNKNOWN


def rank_verdict(rank: str | None) -> str | None:
    """``identified`` for a species answer; ``unknown - refer to lab`` for any coarser one (the
    lab names the species); None without an answer (an unreadable image)."""
    if rank is None:
        return None
    return image_verdict(rank == "species")


def taxon_label(rank: str | None, taxon: str | None) -> str | None:
    """How an answer reads: ``Dalbergia stevensonii``, ``Dalbergia sp.``, ``Fabaceae``."""
    if taxon is None or rank in (None, UNKNOWN_RANK):
        return None
    return f"{taxon} sp." if rank == "genus" else taxon


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest probabilities of one row, best first (ties: lowest index)."""
    return np.argsort(-np.asarray(probabilities), kind="stable")[:k]


def other_share(shares: Sequence[float]) -> float:
    """What the top-k shares leave to the other classes (computed before rounding)."""
    return round(max(0.0, 1.0 - float(np.sum(shares))), 6)


class Lineages:
    """The taxa of a model's classes at each rank, and the lineage of any answer."""

    def __init__(self, classes: Sequence[str], lineage: Sequence[dict] | None = None) -> None:
        lineage = lineage or [{} for _ in classes]
        self.of_class = {
            name: {
                "species": entry.get("species") or name,
                "genus": entry.get("genus"),
                "family": entry.get("family"),
            }
            for name, entry in zip(classes, lineage, strict=True)
        }
        self._above: dict[tuple[str, str], dict] = {}
        for entry in self.of_class.values():
            self._above.setdefault(("species", entry["species"]), entry)
            if entry["genus"]:
                genus = {"species": None, "genus": entry["genus"], "family": entry["family"]}
                self._above.setdefault(("genus", entry["genus"]), genus)
            if entry["family"]:
                family = {"species": None, "genus": None, "family": entry["family"]}
                self._above.setdefault(("family", entry["family"]), family)

    def has(self, rank: str, taxon: str) -> bool:
        """Whether one of the classes is in ``taxon`` at ``rank``."""
        return (rank, taxon) in self._above

    def answerable(self, rank: str) -> bool:
        """Whether the classes span two taxa or more at ``rank`` (the rank rule answers only
        then: a model that never learned what lies outside a taxon cannot place a photo in it)."""
        return rank == "species" or sum(1 for level, _ in self._above if level == rank) >= 2

    def of_answer(self, rank: str | None, taxon: str | None) -> dict:
        """The species, genus and family an answer implies (None at the ranks it leaves open)."""
        if rank in RANKS and taxon is not None:
            return self._above.get((rank, taxon), {"species": None, "genus": None, "family": None})
        return {"species": None, "genus": None, "family": None}


@dataclass
class SpecimenVerdict:
    specimen: str
    images: int
    ok_images: int
    top: list[tuple[str, float]]
    """(class, mean share) of the specimen's top-k classes, best first."""
    rank: str | None
    """species, genus, family or unknown; None without a readable image."""
    taxon: str | None
    retake_images: int = 0
    """Photos the quality gate sent back."""

    @property
    def verdict(self) -> str | None:
        """The rank's verdict; ``retake photos`` when no photo was judged and some failed only
        the quality gate."""
        if self.ok_images == 0 and self.retake_images:
            return RETAKE_PHOTOS
        return rank_verdict(self.rank)

    @property
    def other(self) -> float | None:
        return other_share([share for _, share in self.top]) if self.top else None


@dataclass
class _Sums:
    images: int = 0
    ok_images: int = 0
    retake_images: int = 0
    shares: Counter = field(default_factory=Counter)  # class -> sum of top-k probabilities
    answers: Counter = field(default_factory=Counter)  # (rank, taxon) -> images agreeing there


class SpecimenRollup:
    """The specimen rule (module docstring), fed one image at a time in any order."""

    def __init__(
        self, classes: Sequence[str], top_k: int, lineage: Sequence[dict] | None = None
    ) -> None:
        self.order = {name: i for i, name in enumerate(classes)}
        self.top_k = top_k
        self.lineages = Lineages(classes, lineage)
        self._specimens: dict[str, _Sums] = {}

    def add(
        self,
        specimen: str | None,
        top: Sequence[tuple[str, float]],
        rank: str | None,
        taxon: str | None = None,
        retake: bool = False,
    ) -> None:
        """One image: its top-k (class, probability), best first, and its answer (``rank``:
        species, genus, family or unknown, with its ``taxon``); an unreadable image, or one the
        quality gate sends back (``retake``), has no top and no rank. Images of no specimen (None)
        are not rolled up."""
        if specimen is None:
            return
        sums = self._specimens.setdefault(specimen, _Sums())
        sums.images += 1
        sums.retake_images += retake
        if rank is None:
            return
        sums.ok_images += 1
        for name, probability in top:
            sums.shares[name] += probability
        lineage = self.lineages.of_answer(rank, taxon)
        for level in RANKS:
            if lineage[level] is not None:
                sums.answers[(level, lineage[level])] += 1

    def __len__(self) -> int:
        return len(self._specimens)

    def results(self) -> list[SpecimenVerdict]:
        """Every specimen in first-seen order."""
        return [self._verdict(name, sums) for name, sums in self._specimens.items()]

    def _verdict(self, name: str, sums: _Sums) -> SpecimenVerdict:
        ranked = sorted(
            sums.shares.items(), key=lambda item: (-item[1], self.order.get(item[0], 0))
        )
        top = [(cls, total / sums.ok_images) for cls, total in ranked[: self.top_k]]
        rank, taxon = (UNKNOWN_RANK, None) if sums.ok_images else (None, None)
        for level in filter(self.lineages.answerable, RANKS):
            candidate = self._candidate(level, ranked)
            if candidate is not None and 2 * sums.answers[(level, candidate)] > sums.ok_images:
                rank, taxon = level, candidate
                break
        return SpecimenVerdict(
            name, sums.images, sums.ok_images, top, rank, taxon, sums.retake_images
        )

    def _candidate(self, level: str, ranked: list[tuple[str, float]]) -> str | None:
        """The taxon at ``level`` whose classes hold the largest share (ties: class order)."""
        totals: dict[str, float] = {}
        first: dict[str, int] = {}
        for cls, share in ranked:
            taxon = self.lineages.of_class.get(cls, {}).get(level)
            if taxon is not None:
                totals[taxon] = totals.get(taxon, 0.0) + share
                first.setdefault(taxon, self.order.get(cls, 0))
        if not totals:
            return None
        return min(totals, key=lambda taxon: (-totals[taxon], first[taxon]))


def answer_is_wrong(rank: str | None, taxon: str | None, truth: dict, lineages: Lineages) -> bool:
    """An answer that names a taxon the specimen is not in, at the rank given (``truth``: the
    specimen's species, genus and family; unknown is never wrong)."""
    if rank not in RANKS:
        return False
    return lineages.of_answer(rank, taxon)[rank] != truth.get(rank)


def deepest_answer(truth: dict, lineages: Lineages) -> tuple[str, str | None]:
    """The deepest answer a model with these classes could rightly give for a specimen of
    ``truth``: its species when the model has it, else its genus or family when one of the model's
    classes shares it (and the model knows two taxa or more at that rank), else unknown."""
    for rank in RANKS:
        taxon = truth.get(rank)
        if taxon is not None and lineages.has(rank, taxon) and lineages.answerable(rank):
            return rank, taxon
    return UNKNOWN_RANK, None


CONSISTENT = "consistent"
INCONSISTENT = "inconsistent"
CANNOT_DECIDE = "cannot decide"
DECISIONS = (CONSISTENT, INCONSISTENT, CANNOT_DECIDE)


def declaration_decision(
    rank: str | None, taxon: str | None, declared: dict, declared_rank: str, lineages: Lineages
) -> tuple[str, str]:
    """Whether an answer bears out a declaration (``declared``: its species, genus and family;
    ``declared_rank``: the rank it names), and why, in words.

    ``inconsistent`` when the answer names another taxon at a rank both name (the answer's rank
    is sure by construction); ``consistent`` when it names the declared taxon at the declared rank
    or deeper; ``cannot decide`` when it stops above the declared rank (or is unknown): the lab
    decides.
    """
    if rank is None:
        return CANNOT_DECIDE, "no readable photo"
    if rank not in RANKS:
        return CANNOT_DECIDE, "the model is sure of no rank: refer to lab"
    answer = lineages.of_answer(rank, taxon)
    label = taxon_label(rank, taxon)
    for level in reversed(RANKS):  # family, genus, species: the coarsest difference first
        if RANKS.index(level) < max(RANKS.index(rank), RANKS.index(declared_rank)):
            continue
        if answer.get(level) and declared.get(level) and answer[level] != declared[level]:
            expected = _declared_label(declared, declared_rank)
            return INCONSISTENT, f"looks like {label}, not {expected}"
    if RANKS.index(rank) <= RANKS.index(declared_rank):
        return CONSISTENT, f"looks like {label}"
    return CANNOT_DECIDE, f"consistent at the {rank} ({label}); the {declared_rank} needs the lab"


def _declared_label(declared: dict, rank: str) -> str:
    return taxon_label(rank, declared.get(rank)) or "the declaration"
