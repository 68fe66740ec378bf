"""What jianmu answers about an image and about a specimen: the verdict words, an image's top-k
shares, and the one specimen roll-up that ``jianmu predict`` gives inspectors and ``jianmu eval``
measures.

The specimen rule. A specimen's ``top`` is the mean, over its readable images, of their top-k
calibrated probabilities (a class outside an image's top-k counts 0 for it), ranked by share
(ties: class order). It is ``identified`` when more than half of its readable images are
identified (they pass the unknown-species rule) *with the specimen's top class as their own
top-1*; otherwise (images that disagree, too many unknowns, a tie) it is ``unknown - refer to
lab``. A specimen without a readable image has no verdict. The roll-up needs only what each image
record holds, so it can be recomputed from a predict output file (``--resume`` gives the same
roll-up as one uninterrupted run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IDENTIFIED = "identified"
UNKNOWN = "unknown - refer to lab"
VERDICTS = (IDENTIFIED, UNKNOWN)
SPECIMEN_RULE = (
    "a specimen's shares are the mean of its readable images' top-k calibrated shares; it is "
    "identified when more than half of those images are identified as its top class"
)


def image_verdict(known: bool) -> str:
    """The verdict of a readable image that passes (or fails) the unknown-species rule."""
    return IDENTIFIED if known else UNKNOWN


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest probabilities of one row, best first (ties: lowest index)."""
    return np.argsort(-np.asarray(probabilities), kind="stable")[:k]


def other_share(shares: Sequence[float]) -> float:
    """What the top-k shares leave to the other classes (computed before rounding)."""
    return round(max(0.0, 1.0 - float(np.sum(shares))), 6)


@dataclass
class SpecimenVerdict:
    specimen: str
    images: int
    ok_images: int
    top: list[tuple[str, float]]
    """(class, mean share) of the specimen's top-k classes, best first."""
    verdict: str | None

    @property
    def other(self) -> float | None:
        return other_share([share for _, share in self.top]) if self.top else None


@dataclass
class _Sums:
    images: int = 0
    ok_images: int = 0
    shares: Counter = field(default_factory=Counter)  # class -> sum of top-k probabilities
    votes: Counter = field(default_factory=Counter)  # class -> identified images with it top-1


class SpecimenRollup:
    """The specimen rule (module docstring), fed one image at a time in any order."""

    def __init__(self, classes: Sequence[str], top_k: int) -> None:
        self.order = {name: i for i, name in enumerate(classes)}
        self.top_k = top_k
        self._specimens: dict[str, _Sums] = {}

    def add(
        self, specimen: str | None, top: Sequence[tuple[str, float]], verdict: str | None
    ) -> None:
        """One image: its top-k (class, probability), best first, and its verdict; an unreadable
        image has no top and no verdict. Images of no specimen (None) are not rolled up."""
        if specimen is None:
            return
        sums = self._specimens.setdefault(specimen, _Sums())
        sums.images += 1
        if verdict is None:
            return
        sums.ok_images += 1
        for name, probability in top:
            sums.shares[name] += probability
        if verdict == IDENTIFIED and top:
            sums.votes[top[0][0]] += 1

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
        verdict = None
        if top:
            agreeing = sums.votes[top[0][0]]
            verdict = IDENTIFIED if 2 * agreeing > sums.ok_images else UNKNOWN
        return SpecimenVerdict(name, sums.images, sums.ok_images, top, verdict)
