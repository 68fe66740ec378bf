"""Torch datasets and samplers whose randomness depends only on (seed, epoch, index).

The sampler yields ``(epoch, index)`` keys, and the dataset re-seeds the augmentation for each key,
so an image gets the same augmentation whichever worker decodes it, with persistent workers, and
after a resume: a killed run that is resumed sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from jianmu.data.images import ImageDecodeError, load_image
from jianmu.data.preprocess import preprocess
from jianmu.data.spec import TransformSpec


class ImageDataset(Dataset):
    """``(path, label)`` items decoded with draft JPEG decoding and transformed to tensors."""

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        transform: Callable[[np.ndarray], torch.Tensor],
        decode_size: int | None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.decode_size = decode_size
        self.seed = seed
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.items[index]
        image = self.cache.get(index) if self.cache is not None else None
        if image is None:
            image = np.asarray(load_image(path, size=self.decode_size))
            if self.cache is not None:
                self.cache[index] = image
        if hasattr(self.transform, "set_random_state"):
            entropy = [self.seed, epoch, index]
            self.transform.set_random_state(
                np.random.default_rng(entropy), random.Random(hash(tuple(entropy)))
            )
        return self.transform(image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]


class EpochSampler(Sampler):
    """Shuffled (or class-weighted) order per epoch from ``(seed, epoch)``; sharded across ranks.

    Each rank takes every ``world_size``-th key of one shared order, padded to equal length, so
    ranks see disjoint data (as torch's DistributedSampler). Call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """The full (unsharded) index order of the current epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.num_samples, True, generator=generator)
            return drawn.tolist()
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=generator).tolist()
        return list(range(self.num_samples))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        per_rank = -(-len(order) // self.world_size)
        order += order[: per_rank * self.world_size - len(order)]
        return iter([(self.epoch, index) for index in order[self.rank :: self.world_size]])

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)


def class_balanced_weights(labels: Sequence[int]) -> list[float]:
    """Per-sample weights so that each class is drawn equally often."""
    counts = np.bincount(np.asarray(labels))
    return [1.0 / counts[label] for label in labels]


class PreprocessTransform:
    """The eval preprocessing (:func:`jianmu.data.preprocess.preprocess`) as a tensor transform,
    for the training loop's validation batches: the same pixels every later model run sees."""

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(preprocess(image, self.spec))


class TolerantImageDataset(ImageDataset):
    """Like :class:`ImageDataset`, but an unreadable image yields a zero tensor and ``ok=False``
    instead of an error, so evaluation and prediction list bad files and go on."""

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        index = key[1] if isinstance(key, tuple) else key
        try:
            image, label = super().__getitem__(key)
            return image, label, True
        except ImageDecodeError:
            size = self.transform.spec.input_size
            return torch.zeros(3, size, size), self.items[index][1], False
