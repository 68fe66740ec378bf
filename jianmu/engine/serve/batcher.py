"""Micro-batching: the photos of concurrent requests go through the model together.

One thread per model runs it; requests hand it their decoded photos and wait on a future, so the
event loop never blocks on the model. A batch starts as soon as photos are waiting and no other
request is still decoding photos it announced (:meth:`MicroBatcher.expect`), or when
``wait`` seconds have passed since the first photo arrived, or when ``max_batch`` photos are
together: a lone request pays no wait, and concurrent ones share a model run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``images -> (logits, embeddings)``, one row per image."""


@dataclass
class _Job:
    images: np.ndarray
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Runs ``run`` on the photos of several requests at once, in one thread.

    Args:
        run: the model: preprocessed N x 3 x H x W images -> (logits, embeddings).
        max_batch: photos per run, at most (a larger request is run in parts).
        wait: seconds the first photos wait for those of requests still decoding.
        observe: called as ``observe(photos, seconds)`` after each run (metrics).
    """

    def __init__(
        self,
        run: Run,
        max_batch: int,
        wait: float,
        name: str = "model",
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self._max_batch = max(1, max_batch)
        self._wait = max(0.0, wait)
        self._observe = observe
        self._jobs: list[_Job] = []
        self._expected = 0
        self._closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"jianmu-batch-{name}", daemon=True)
        self._thread.start()

    def expect(self) -> _Slot:
        """Announce photos that are being decoded: the model waits for them (at most ``wait``).
        Use as ``with batcher.expect() as slot: ...; future = slot.submit(images)``."""
        with self._condition:
            self._expected += 1
        return _Slot(self)

    def submit(self, images: np.ndarray) -> Future:
        """Queue preprocessed images; the future's result is their ``(logits, embeddings)``."""
        return self._submit(images, announced=False)

    def _submit(self, images: np.ndarray, announced: bool) -> Future:
        job = _Job(images)
        with self._condition:
            if self._closed:
                raise RuntimeError("the model's batcher is closed")
            if announced:
                self._expected -= 1
            self._jobs.append(job)
            self._condition.notify_all()
        return job.future

    def _withdraw(self) -> None:
        with self._condition:
            self._expected -= 1
            self._condition.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the photos already queued."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            self._execute(jobs)

    def _next_jobs(self) -> list[_Job] | None:
        with self._condition:
            while not self._jobs and not self._closed:
                self._condition.wait()
            if not self._jobs:
                return None
            deadline = time.monotonic() + self._wait
            while self._expected > 0 and self._queued() < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            taken, photos = 0, 0
            for job in self._jobs:
                if taken and photos + len(job.images) > self._max_batch:
                    break
                taken, photos = taken + 1, photos + len(job.images)
            jobs, self._jobs = self._jobs[:taken], self._jobs[taken:]
            return jobs

    def _queued(self) -> int:
        return sum(len(job.images) for job in self._jobs)

    def _execute(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            images = np.concatenate([job.images for job in jobs])
            parts = [
                self._run(images[start : start + self._max_batch])
                for start in range(0, len(images), self._max_batch)
            ]
            logits = np.concatenate([part[0] for part in parts])
            embeddings = np.concatenate([part[1] for part in parts])
        except BaseException as error:  # noqa: BLE001 - every waiting request gets the error
            for job in jobs:
                job.future.set_exception(error)
            return
        if self._observe is not None:
            self._observe(len(images), time.perf_counter() - started)
        start = 0
        for job in jobs:
            end = start + len(job.images)
            job.future.set_result((logits[start:end], embeddings[start:end]))
            start = end


class _Slot:
    """Photos announced to a :class:`MicroBatcher`: submitted once, or withdrawn on exit."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True

    def submit(self, images: np.ndarray) -> Future:
        if not self._open:
            raise RuntimeError("these photos were already submitted")
        self._open = False
        return self._batcher._submit(images, announced=True)

    def __enter__(self) -> _Slot:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._open:
            self._open = False
            self._batcher._withdraw()
