"""Reference photos beside every candidate: a small gallery of training photos that a bundle can
carry (``export.gallery`` per class, off by default: the photos fall under the data set's licence,
whose note is stored with them), and the pick, for each top-k candidate of a query, of that class's
photo nearest to the query in the model's embedding space.

Selection (:func:`select_gallery`) starts each class at its most typical photo (nearest the class's
mean direction) and adds the photo farthest from those already taken (greedy k-center in cosine
distance), so that three photos show three looks of a species rather than three near-copies.
Picking (:meth:`Gallery.nearest`) is one matrix product per batch of queries, cheap next to the
model. Thumbnails are small JPEGs (:func:`make_thumbnail`) of the photo as decoded.

Stored as one safetensors blob (:meth:`Gallery.to_blob`): ``embeddings`` (G x D float16, unit
length), ``classes`` (G int32), ``jpeg`` (the thumbnails' bytes, concatenated, uint8) and
``offsets`` (G + 1 int64); the source names, licence note and thumbnail size sit in the header's
metadata, so the blob alone is the whole gallery. numpy, Pillow and safetensors only: no torch.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jianmu.errors import JianmuError

GALLERY_FORMAT = "jianmu.gallery/1"
# Longest side of a thumbnail and its JPEG quality: about 5-8 KB a photo, enough to compare
# pores, rays or wing venation by eye beside the query.
THUMBNAIL_PX = 160
THUMBNAIL_QUALITY = 80
NO_LICENCE = "licence not stated"
_TENSORS = {"embeddings": "float16", "classes": "int32", "jpeg": "uint8", "offsets": "int64"}
_JPEG_START = b"\xff\xd8"


def select_gallery(embeddings: np.ndarray, targets: np.ndarray, per_class: int) -> np.ndarray:
    """Row indices of up to ``per_class`` diverse photos per class (targets < 0 left out), by
    class, each class in the order chosen: its photo nearest the class's mean direction, then
    greedy farthest-point in cosine distance. Deterministic (ties go to the earlier row)."""
    if per_class < 1:
        raise JianmuError(f"gallery: per_class must be at least 1, got {per_class}")
    unit = _unit_rows(np.asarray(embeddings, dtype=np.float32))
    targets = np.asarray(targets)
    if targets.shape != (len(unit),):
        raise JianmuError(f"gallery: {targets.size} targets for {len(unit)} embeddings")
    chosen = [
        rows[_farthest_points(unit[rows], per_class)]
        for label in np.unique(targets[targets >= 0])
        for rows in [np.flatnonzero(targets == label)]
    ]
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def _farthest_points(unit: np.ndarray, count: int) -> np.ndarray:
    """Positions of ``count`` rows of unit vectors: the most central, then k-center."""
    centre = unit.mean(axis=0)
    first = int(np.argmax(unit @ centre))  # the mean's direction: no need to normalise it
    picked = [first]
    distance = 1.0 - unit @ unit[first]
    distance[first] = -np.inf
    while len(picked) < min(count, len(unit)):
        farthest = int(np.argmax(distance))
        picked.append(farthest)
        distance = np.minimum(distance, 1.0 - unit @ unit[farthest])
        distance[picked] = -np.inf
    return np.asarray(picked, dtype=np.int64)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    if matrix.ndim != 2:
        raise JianmuError(f"gallery: expected embeddings as an N x D array, got {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def make_thumbnail(
    image: Image.Image, size: int = THUMBNAIL_PX, quality: int = THUMBNAIL_QUALITY
) -> bytes:
    """JPEG bytes of ``image`` shrunk to a longest side of at most ``size`` (no metadata)."""
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Reference:
    """The gallery photo of a candidate class nearest to a query."""

    class_index: int
    index: int
    """Position in the gallery."""
    source: str
    """The training photo's path relative to the data root."""
    distance: float
    """Cosine distance to the query (0: same direction; 2: opposite)."""
    jpeg: bytes = field(repr=False)

    def data_uri(self) -> str:
        """The thumbnail as a ``data:`` URI, for a self-contained page."""
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


class Gallery:
    """Reference photos: unit embeddings (G x D, float16), class index, JPEG thumbnail and source
    name per photo, and the licence note they are carried under."""

    def __init__(
        self,
        embeddings: np.ndarray,
        classes: Sequence[int] | np.ndarray,
        jpegs: Sequence[bytes],
        sources: Sequence[str],
        licence: str = NO_LICENCE,
        thumbnail_px: int = THUMBNAIL_PX,
        per_class: int | None = None,
        where: str | Path = "gallery",
    ) -> None:
        matrix = np.asarray(embeddings, dtype=np.float32)
        self.classes = np.asarray(classes, dtype=np.int32)
        self.jpegs = [bytes(jpeg) for jpeg in jpegs]
        self.sources = [str(source) for source in sources]
        self.licence = str(licence)
        self.thumbnail_px = int(thumbnail_px)
        problem = _inconsistency(matrix, self.classes, self.jpegs, self.sources)
        if problem:
            raise JianmuError(f"{where}: refused: {problem}")
        self.embeddings = _unit_rows(matrix).astype(np.float16)
        counts = np.bincount(self.classes) if len(self.classes) else np.zeros(0, np.int64)
        self.per_class = int(per_class if per_class is not None else counts.max(initial=0))
        self._unit = self.embeddings.astype(np.float32)  # matrix products run in float32
        self._members = _members_table(self.classes, counts)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def nearest(
        self, embeddings: np.ndarray, candidates: np.ndarray | Sequence[Sequence[int]]
    ) -> list[list[Reference | None]]:
        """Per query row and candidate class (N x K class indices): the class's photo nearest to
        the query in cosine distance, or None when the class has no photo here."""
        queries = np.asarray(embeddings, dtype=np.float32)
        candidates = np.asarray(candidates, dtype=np.int64)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise JianmuError(
                f"gallery: query embeddings of shape {queries.shape}, the gallery's have "
                f"{self.dim} dimensions"
            )
        if candidates.ndim != 2 or len(candidates) != len(queries):
            raise JianmuError(
                f"gallery: candidates of shape {candidates.shape} for {len(queries)} queries"
            )
        if not len(self):
            return [[None] * candidates.shape[1] for _ in range(len(queries))]
        with _one_blas_thread():
            similarity = _unit_rows(queries) @ self._unit.T  # N x G: the one matrix product
        known = (candidates >= 0) & (candidates < len(self._members))
        members = self._members[np.where(known, candidates, 0)]  # N x K x P, -1: no photo
        present = (members >= 0) & known[..., None]
        rows = np.arange(len(queries))[:, None, None]
        scores = np.where(present, similarity[rows, np.maximum(members, 0)], -np.inf)
        best = np.take_along_axis(members, scores.argmax(axis=2)[..., None], axis=2)[..., 0]
        found = present.any(axis=2)
        distance = 1.0 - scores.max(axis=2)
        return [
            [self._reference(best[n, k], distance[n, k]) if found[n, k] else None
             for k in range(candidates.shape[1])]
            for n in range(len(queries))
        ]  # fmt: skip

    def _reference(self, index: int, distance: float) -> Reference:
        index = int(index)
        return Reference(
            int(self.classes[index]), index, self.sources[index],
            round(max(float(distance), 0.0), 4), self.jpegs[index],
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The JSON-able summary a bundle's metadata carries under ``gallery``."""
        return {
            "per_class": self.per_class,
            "count": len(self),
            "classes_with_photos": len(np.unique(self.classes)),
            "licence": self.licence,
            "thumbnail_px": self.thumbnail_px,
            "sources": list(self.sources),
        }

    def to_blob(self) -> bytes:
        """The gallery as one safetensors blob (see the module docstring)."""
        from safetensors.numpy import save

        sizes = [len(jpeg) for jpeg in self.jpegs]
        arrays = {
            "embeddings": np.ascontiguousarray(self.embeddings.reshape(len(self), self.dim)),
            "classes": self.classes,
            "jpeg": np.frombuffer(b"".join(self.jpegs), dtype=np.uint8),
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        }
        metadata = {
            "format": GALLERY_FORMAT,
            "sources": json.dumps(self.sources, ensure_ascii=False),
            "licence": self.licence,
            "thumbnail_px": str(self.thumbnail_px),
            "per_class": str(self.per_class),
        }
        return save(arrays, metadata=metadata)

    @classmethod
    def from_blob(cls, blob: bytes, where: str | Path, num_classes: int | None = None) -> Gallery:
        """Read :meth:`to_blob`'s bytes; ``num_classes``, when given, bounds the class indices.

        Raises:
            JianmuError: an unreadable or inconsistent blob ("<where>: refused: ...").
        """
        arrays, metadata = _read_blob(blob, where)
        try:
            sources = json.loads(metadata["sources"])
            licence, size = metadata["licence"], int(metadata["thumbnail_px"])
            per_class = int(metadata["per_class"])
        except (KeyError, ValueError, TypeError) as error:
            raise JianmuError(f"{where}: refused: reference gallery header ({error})") from None
        jpegs = _split_jpegs(arrays["jpeg"], arrays["offsets"], where)
        classes = arrays["classes"]
        if num_classes is not None and len(classes) and int(classes.max()) >= num_classes:
            raise JianmuError(
                f"{where}: refused: reference gallery has class {int(classes.max())} of a model "
                f"with {num_classes} classes"
            )
        if not isinstance(sources, list):
            raise JianmuError(f"{where}: refused: reference gallery sources are not a list")
        return cls(arrays["embeddings"], classes, jpegs, sources, licence, size, per_class, where)


def _inconsistency(
    embeddings: np.ndarray, classes: np.ndarray, jpegs: list[bytes], sources: list[str]
) -> str:
    """What is wrong with a gallery's parts, or "" when they agree."""
    count = len(classes)
    if embeddings.ndim != 2 or len(embeddings) != count or classes.ndim != 1:
        return f"reference gallery of {count} classes for embeddings of shape {embeddings.shape}"
    if len(jpegs) != count or len(sources) != count:
        return f"reference gallery of {count} photos with {len(jpegs)} JPEGs, {len(sources)} names"
    if count and int(classes.min()) < 0:
        return "reference gallery with a negative class index"
    if not np.isfinite(embeddings).all():
        return "reference gallery embeddings contain NaN or infinite values"
    if any(not jpeg.startswith(_JPEG_START) for jpeg in jpegs):
        return "reference gallery thumbnail that is not a JPEG"
    return ""


@functools.lru_cache(maxsize=1)
def _blas_pools() -> Any:
    try:
        from threadpoolctl import ThreadpoolController  # installed with scikit-learn
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Run BLAS on one thread: a product this small gains nothing from two, and on a busy
    two-core machine OpenBLAS's second thread now and then waits 8-32 ms for a core (measured:
    the median pick 0.27 ms, one in ten over 8 ms; on one thread 0.33 ms, none over 1 ms)."""
    pools = _blas_pools()
    return pools.limit(limits=1) if pools is not None else contextlib.nullcontext()


def _members_table(classes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Class -> its gallery positions, padded with -1 (C x P), for a vectorised pick."""
    table = np.full((len(counts), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    filled = np.zeros(len(counts), dtype=np.int64)
    for index, label in enumerate(classes):
        table[label, filled[label]] = index
        filled[label] += 1
    return table


def _read_blob(blob: bytes, where: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and header metadata of a gallery blob, each tensor of its expected type."""
    from safetensors.numpy import load

    try:
        arrays = dict(load(bytes(blob)))
        length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + length]).get("__metadata__") or {}
    except Exception as error:  # noqa: BLE001 - any parse failure is a refused bundle
        raise JianmuError(f"{where}: refused: unreadable reference gallery ({error})") from None
    if metadata.get("format") != GALLERY_FORMAT:
        raise JianmuError(f"{where}: refused: not a {GALLERY_FORMAT} reference gallery")
    for name, dtype in _TENSORS.items():
        if name not in arrays or arrays[name].dtype != np.dtype(dtype):
            raise JianmuError(f"{where}: refused: reference gallery lacks {name} ({dtype})")
    return arrays, metadata


def _split_jpegs(data: np.ndarray, offsets: np.ndarray, where: str | Path) -> list[bytes]:
    ordered = offsets.ndim == 1 and len(offsets) and offsets[0] == 0
    if not ordered or (np.diff(offsets) < 0).any() or offsets[-1] != len(data):
        raise JianmuError(f"{where}: refused: reference gallery offsets do not fit its JPEG bytes")
    raw = data.tobytes()
    return [raw[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
