"""Classes added to (or removed from) a trained model without retraining, numpy only: an ONNX
bundle extended this way still runs without torch.

The network is left as it is. A model's classes are then the network outputs it keeps
(``keep``, in order) followed by the added classes. An added class enters through the Gaussian
model of the embeddings that the unknown-species and rank rules already use (class means with
one shared precision matrix, :mod:`jianmu.calibration.scores`): its mean is fitted on its photos,
the precision stays the one fitted on the training photos. The added classes take the share of
probability that this Gaussian model gives them against the known classes,

    q(x) = sum over added a of p(a | x),   p(c | x) ~ exp(-d_c(x)^2 / 2)  over all classes c,

(d: the Mahalanobis distance), and the network's classes share the rest in the proportions the
network gives them. So the known classes' order never changes, and their probabilities shrink
only by what the added classes take. In logits at the temperature ``T`` in force (softmax of
``logits / T`` gives exactly those probabilities):

    added a:  T * (-d_a^2 / 2 - logsumexp over known k of (-d_k^2 / 2)) + T * logsumexp(l / T)

and the kept network logits ``l`` unchanged. Stored in a model's metadata::

    "extension": {"outputs": <network outputs>, "keep": [output index of each kept class],
                  "added": <count>, "history": [provenance of each step]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jianmu.calibration.scores import FeatureStatistics, logsumexp_rows, squared_distances
from jianmu.errors import JianmuError


@dataclass(frozen=True)
class ClassMap:
    """Which network outputs a model keeps, and how many classes it adds after them."""

    outputs: int
    keep: tuple[int, ...]
    added: int

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ClassMap | None:
        """The class map of an extended model; None for a model as trained.

        Raises:
            JianmuError: an extension record that disagrees with the class list.
        """
        record = meta.get("extension")
        if not record:
            return None
        try:
            mapped = cls(int(record["outputs"]), tuple(int(i) for i in record["keep"]),
                         int(record["added"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise JianmuError(f"refused: unreadable extension record ({error})") from None
        if len(mapped.keep) + mapped.added != len(meta["classes"]) or any(
            not 0 <= index < mapped.outputs for index in mapped.keep
        ):
            raise JianmuError(
                f"refused: the extension record maps {len(mapped.keep)} network outputs and "
                f"{mapped.added} added classes, the metadata lists {len(meta['classes'])} classes"
            )
        return mapped

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "keep": list(self.keep), "added": self.added}

    def apply(
        self,
        logits: np.ndarray,
        embeddings: np.ndarray,
        statistics: FeatureStatistics | None,
        temperature: float,
    ) -> np.ndarray:
        """The model's logits (N x classes) from the network's (N x outputs) and its embeddings."""
        kept = np.asarray(logits, dtype=np.float32)[:, list(self.keep)]
        if not self.added:
            return kept
        if statistics is None or statistics.mahalanobis is None:
            raise JianmuError("refused: an extended model without class statistics")
        half = -0.5 * squared_distances(statistics.mahalanobis, embeddings)
        known, added = half[:, : len(self.keep)], half[:, len(self.keep) :]
        base = logsumexp_rows(kept.astype(np.float64) / temperature)[:, None]
        new = temperature * (added - logsumexp_rows(known)[:, None] + base)
        return np.concatenate([kept, new.astype(np.float32)], axis=1)


def network_outputs(meta: dict[str, Any]) -> int:
    """How many logits the network itself gives (the class count of a model as trained)."""
    record = meta.get("extension")
    return int(record["outputs"]) if record else len(meta["classes"])
