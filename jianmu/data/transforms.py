"""Image transforms in three stages, like timm ``transforms_imagenet_train``.

geometry (sized from the model) -> appearance (the field-capture shifts listed in YAML as
``[{AlbumentationsName: {kwargs}}]``) -> normalize + to tensor. This is the one module that imports
albumentations; everything else asks it for a callable ``image (HWC uint8 RGB) -> tensor``.
"""

from __future__ import annotations

import inspect
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from jianmu.config import AugmentConfig
from jianmu.data.preprocess import interpolation_flag
from jianmu.data.spec import TransformSpec, as_triple
from jianmu.errors import JianmuError, did_you_mean

# Half the samples keep the photo's own orientation (no interpolation softening).
_ROTATE_P = 0.5
# Base classes, and steps the pipeline adds itself (normalization comes from the model).
_NOT_APPEARANCE = {
    "BasicTransform", "BaseCompose", "Compose", "ImageOnlyTransform", "DualTransform",
    "Transform3D", "Normalize", "ToFloat", "FromFloat",
}  # fmt: skip


class ImageTransform:
    """``transform(image)``: HWC uint8 RGB numpy array -> CHW float32 tensor (or HWC uint8).

    Randomness: a ``seed`` at build time makes the stream reproducible in one process. A caller
    that seeds every item (``set_random_state``, as the dataset does per ``(seed, epoch, index)``)
    owns the random state from then on. Otherwise, in a DataLoader worker the state is reseeded
    from the worker's torch seed, so workers and epochs do not repeat each other's augmentations
    (albumentations 2.0 copies one state into every worker).
    """

    def __init__(self, compose: A.Compose, spec: TransformSpec) -> None:
        self.compose = compose
        self.spec = spec
        self._seeded_by_caller = False
        self._worker_seed: int | None = None

    def __call__(self, image: np.ndarray) -> torch.Tensor | np.ndarray:
        if not self._seeded_by_caller:
            worker = torch.utils.data.get_worker_info()
            if worker is not None and worker.seed != self._worker_seed:
                self._worker_seed = worker.seed
                self.compose.set_random_seed(worker.seed % 2**32)
        return self.compose(image=image)["image"]

    def set_random_state(self, generator: np.random.Generator, py_random: random.Random) -> None:
        """Use these generators for the next images (albumentations ``set_random_state``)."""
        self._seeded_by_caller = True
        self.compose.set_random_state(generator, py_random)

    def set_random_seed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self._seeded_by_caller = True
        self.compose.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"ImageTransform({self.spec}, {self.compose!r})"


def build_train_transform(
    augment: AugmentConfig,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    normalize: bool = True,
    seed: int | None = None,
) -> ImageTransform:
    """Rotation, random resized crop and flips, then ``augment.appearance``, then normalize.

    Args:
        augment: geometry switches and the appearance list.
        input_size: side of the square model input.
        mean, std: per-channel normalization (from the model's data config).
        interpolation: ``bicubic``, ``bilinear``, ``nearest``, ``area`` or ``lanczos``.
        normalize: False returns the augmented HWC uint8 image (for previews).
        seed: makes the random stream reproducible in this process.

    Raises:
        JianmuError: unknown interpolation, unknown transform name or bad transform arguments.
    """
    method = _interpolation(interpolation)
    geometry: list[Any] = []
    if augment.rotate_limit > 0:
        # Rotating before the crop and keeping the largest upright box leaves no empty corners.
        geometry.append(
            A.Rotate(
                limit=augment.rotate_limit, interpolation=method, crop_border=True, p=_ROTATE_P
            )
        )
    geometry.append(
        A.RandomResizedCrop(
            size=(input_size, input_size),
            scale=tuple(augment.scale),
            ratio=tuple(augment.ratio),
            interpolation=method,
        )
    )
    if augment.hflip:
        geometry.append(A.HorizontalFlip(p=0.5))
    if augment.vflip:
        geometry.append(A.VerticalFlip(p=0.5))
    if augment.rotate90:
        geometry.append(A.RandomRotate90(p=1.0))  # k = 0..3 uniformly: no preferred "up"
    appearance = build_appearance(augment.appearance or [])
    spec = TransformSpec(input_size, as_triple(mean, "mean"), as_triple(std, "std"), interpolation)
    return _compose(geometry + appearance, spec, normalize, seed)


def build_eval_transform(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float = 1.0,
    normalize: bool = True,
) -> ImageTransform:
    """Resize the shorter side to ``floor(input_size / crop_pct)``, center crop, normalize."""
    if not 0.0 < crop_pct <= 1.0:
        raise JianmuError(f"crop_pct must be in (0, 1], got {crop_pct}")
    scale_size = math.floor(input_size / crop_pct)
    method = _interpolation(interpolation)
    geometry = [
        A.SmallestMaxSize(max_size=scale_size, interpolation=method),
        A.CenterCrop(height=input_size, width=input_size),
    ]
    spec = TransformSpec(
        input_size, as_triple(mean, "mean"), as_triple(std, "std"), interpolation, crop_pct
    )
    return _compose(geometry, spec, normalize, seed=0)


def build_spec_transform(spec: TransformSpec, normalize: bool = True) -> ImageTransform:
    """The eval transform a stored :class:`TransformSpec` describes."""
    return build_eval_transform(
        spec.input_size, spec.mean, spec.std, spec.interpolation, spec.crop_pct, normalize
    )


def build_appearance(entries: Sequence[Any], where: str = "augment.appearance") -> list[Any]:
    """Albumentations transforms from ``[{Name: {kwarg: value}}]``.

    ``OneOf``, ``SomeOf`` and ``Sequential`` take their ``transforms`` in the same form, e.g.
    ``{OneOf: {transforms: [{Defocus: {radius: [1, 3]}}, {MotionBlur: {}}], p: 0.3}}``.

    Raises:
        JianmuError: naming the entry, for an unknown name (with a "did you mean" hint), an
            unknown keyword or a value the transform refuses.
    """
    if not isinstance(entries, (list, tuple)):
        raise JianmuError(f"{where}: expected a list of {{Name: {{kwargs}}}}, got {entries!r}")
    return [_build_entry(entry, f"{where}[{index}]") for index, entry in enumerate(entries)]


def _build_entry(entry: Any, where: str) -> Any:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise JianmuError(f"{where}: expected one {{Name: {{kwargs}}}} mapping, got {entry!r}")
    ((name, kwargs),) = entry.items()
    kwargs = dict(kwargs or {})
    if not isinstance(name, str):
        raise JianmuError(f"{where}: transform name must be a string, got {name!r}")
    cls = _TRANSFORMS.get(name)
    if cls is None:
        raise JianmuError(f"{where}: unknown albumentations transform '{name}'{_hint(name)}")
    where = f"{where} {name}"
    if issubclass(cls, A.BaseCompose):
        kwargs["transforms"] = build_appearance(kwargs.get("transforms", []), f"{where}.transforms")
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in kwargs:
        if key not in accepted and not open_ended:
            hint = did_you_mean(key, accepted, n=2, cutoff=0.5)
            raise JianmuError(
                f"{where}: unknown argument '{key}'{hint} (accepted: {', '.join(accepted)})"
            )
    try:
        return cls(**kwargs)
    except Exception as error:  # noqa: BLE001 - albumentations raises pydantic, Value and Type errors
        raise JianmuError(f"{where}: {_first_line(error)}") from None


def _compose(
    transforms: list[Any], spec: TransformSpec, normalize: bool, seed: int | None
) -> ImageTransform:
    if normalize:
        transforms = [
            *transforms,
            A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    return ImageTransform(A.Compose(transforms, seed=seed), spec)


def _interpolation(name: str) -> int:
    return interpolation_flag(name)


def _first_line(error: Exception) -> str:
    """One line from an albumentations error; its pydantic text is "N validation error(s) for
    InitSchema / field / message [type=...] / url"."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if re.match(r"\d+ validation errors? for", lines[0]) and len(lines) >= 3:
        message = re.sub(r"\s*\[type=.*$", "", lines[2]).removeprefix("Value error, ")
        return f"{lines[1]}: {message}"
    return lines[0]


def _transform_classes() -> dict[str, type]:
    """Public albumentations transforms usable in the appearance stage, by name."""
    found = {}
    for name in dir(A):
        value = getattr(A, name)
        if (
            isinstance(value, type)
            and issubclass(value, (A.BasicTransform, A.BaseCompose))
            and not name.startswith("_")
            and name not in _NOT_APPEARANCE
        ):
            found[name] = value
    return found


_TRANSFORMS = _transform_classes()


def _hint(name: str) -> str:
    return did_you_mean(name, _TRANSFORMS, n=3, cutoff=0.6)
