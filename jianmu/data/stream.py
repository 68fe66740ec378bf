"""Decoding images in a thread pool while the model runs, in order, with bounded memory.

Pillow's JPEG decoder and OpenCV's resize release the GIL, so threads decode in parallel without
the start-up cost of worker processes. At most ``prefetch`` batches are decoded ahead of the
consumer: memory stays flat however many paths there are (the paths may be a generator).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.data.images import READ_TIMEOUT, ImageDecodeError
from jianmu.data.preprocess import load_preprocessed
from jianmu.data.quality import MEASURES, unmeasured
from jianmu.data.spec import TransformSpec


@dataclass
class Decoded:
    """A file decoded and preprocessed: the CHW float32 image, the quality measures of the picture
    the model sees (:func:`jianmu.data.quality.measure`) and anything else the decoder keeps."""

    image: np.ndarray
    quality: np.ndarray
    extra: Any = None


Decode = Callable[[Path, TransformSpec], Decoded]
"""``(path, spec) -> Decoded``."""


@dataclass
class Batch:
    """Consecutive inputs ``start .. start + len(paths)``; ``images`` holds the readable ones."""

    start: int
    paths: list[Path]
    images: np.ndarray  # K x 3 x H x W float32, K = number of readable paths
    ok: np.ndarray  # len(paths) bool
    errors: dict[int, str] = field(default_factory=dict)  # position in batch -> reason
    extras: list[Any] = field(default_factory=list)  # per path, the decoder's extra (or None)
    quality: np.ndarray = field(default_factory=lambda: np.zeros((0, len(MEASURES)), np.float32))
    """len(paths) x len(MEASURES) quality measures (NaN rows for unreadable paths)."""


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def stream_batches(
    paths: Iterable[str | Path],
    spec: TransformSpec,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 2,
    decode: Decode | None = None,
    read_timeout: float | None = READ_TIMEOUT,
) -> Iterator[Batch]:
    """Batches of preprocessed images of ``paths``, in order; unreadable files are reported in
    :attr:`Batch.errors`, never raised.

    Args:
        decode: ``(path, spec) -> Decoded``; the default reads (within ``read_timeout``
            seconds), decodes, preprocesses and measures, and keeps no extra. A custom one can also
            keep a thumbnail; it bounds its own reads.
    """
    decode = decode or partial(_decode, timeout=read_timeout)
    workers = workers or default_workers()
    iterator = iter(paths)
    start = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jianmu-decode") as pool:
        pending: deque[tuple[int, list[Path], list[Future]]] = deque()

        def submit() -> bool:
            nonlocal start
            chunk = [Path(p) for p in itertools.islice(iterator, batch_size)]
            if not chunk:
                return False
            futures = [pool.submit(decode_safely, decode, p, spec) for p in chunk]
            pending.append((start, chunk, futures))
            start += len(chunk)
            return True

        for _ in range(max(1, prefetch)):
            if not submit():
                break
        while pending:
            first, chunk, futures = pending.popleft()
            submit()
            yield collect_batch(first, chunk, [future.result() for future in futures], spec)


def collect_batch(
    start: int,
    paths: list[Path],
    results: list[tuple[Decoded | None, str | None]],
    spec: TransformSpec,
) -> Batch:
    """The :class:`Batch` of ``paths`` from their :func:`decode_safely` results."""
    ok = np.array([error is None for _, error in results], dtype=bool)
    images = [done.image for done, error in results if error is None]
    size = spec.input_size
    return Batch(
        start,
        paths,
        np.stack(images) if images else np.zeros((0, 3, size, size), np.float32),
        ok,
        {i: error for i, (_, error) in enumerate(results) if error is not None},
        [done.extra if done else None for done, _ in results],
        np.stack([done.quality if done else unmeasured() for done, _ in results]),
    )


def _decode(path: Path, spec: TransformSpec, timeout: float | None) -> Decoded:
    return Decoded(*load_preprocessed(path, spec, timeout))


def decode_safely(
    decode: Decode, path: Path, spec: TransformSpec
) -> tuple[Decoded | None, str | None]:
    """``(decoded, None)``, or ``(None, reason)`` for a file that cannot be decoded: one bad file
    never stops a batch (nor a server's request)."""
    try:
        return decode(path, spec), None
    except ImageDecodeError as error:
        return None, error.reason
    except MemoryError:
        return None, "out of memory while decoding"
    except Exception as error:  # noqa: BLE001 - one bad file must never stop a batch
        return None, f"unreadable ({type(error).__name__}: {str(error)[:80]})"
