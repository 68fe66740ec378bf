"""The one eval preprocessing of a :class:`TransformSpec`, in numpy and OpenCV alone, and the
test-time views.

Resize the shorter side to ``floor(input_size / crop_pct)``, center crop, normalize. Every model
run goes through it: training's validation, calibration, eval, export parity, predict. It imports
neither torch nor albumentations, so an ONNX bundle runs on numpy arrays. (The albumentations eval
transform, ``build_spec_transform``, does the same arithmetic; it is kept only as the independent
reference of the export parity check, and a test holds the two equal.)
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from jianmu.config import AugmentConfig
from jianmu.data.images import READ_TIMEOUT, ImageProbe, open_image
from jianmu.data.quality import measure
from jianmu.data.spec import INTERPOLATION_NAMES, TransformSpec
from jianmu.errors import JianmuError

INTERPOLATIONS = dict(
    zip(
        INTERPOLATION_NAMES,
        (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4),
        strict=True,
    )
)


def interpolation_flag(name: str) -> int:
    """The OpenCV flag for an interpolation name of :data:`INTERPOLATION_NAMES`."""
    if name not in INTERPOLATIONS:
        raise JianmuError(
            f"unknown interpolation {name!r}; choose one of {', '.join(INTERPOLATIONS)}"
        )
    return INTERPOLATIONS[name]


# The 8 symmetries of a square, as (quarter turns, then a left-right flip), ordered so that the
# first 2 (a left-right flip) and the first 4 (both flips) are views on their own: a model trained
# with flips but no quarter turns (insect wings have an up) is shown only the views it learnt.
_SYMMETRIES = (
    (0, False),
    (0, True),
    (2, True),
    (2, False),
    (1, False),
    (1, True),
    (3, False),
    (3, True),
)
DIHEDRAL_VIEWS = len(_SYMMETRIES)


def dihedral(batch: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0..7) of an N x C x H x W batch: 0 as is, 1 flipped left-right, 2 upside
    down, 3 turned by half, 4-7 quarter turns, as is and flipped."""
    turns, flip = _SYMMETRIES[view]
    rotated = np.rot90(batch, turns, axes=(2, 3))
    return np.ascontiguousarray(rotated[..., ::-1] if flip else rotated)


def augmented_views(augment: AugmentConfig) -> int:
    """How many of the :func:`dihedral` views training with ``augment``'s flips and quarter turns
    covers: what test-time augmentation averages over (8 with quarter turns and a flip, 4 with
    both flips, 2 with the left-right one; else 1: an up-down flip alone, or turns without a
    flip, are not a run of views from the first)."""
    if augment.rotate90 and (augment.hflip or augment.vflip):
        return DIHEDRAL_VIEWS
    if augment.hflip and augment.vflip:
        return 4
    return 2 if augment.hflip else 1


def decode_size(spec: TransformSpec) -> int:
    """The shorter side an image needs before the resize (for draft JPEG decoding)."""
    return math.ceil(spec.input_size / spec.crop_pct)


def preprocess(image: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32, resized, center-cropped and normalized as ``spec`` says."""
    return normalize(crop(image, spec), spec)


def crop(image: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """HWC uint8 RGB -> the ``input_size`` square uint8 picture the model sees: the shorter side
    resized to ``floor(input_size / crop_pct)``, then centre-cropped."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise JianmuError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if not 0.0 < spec.crop_pct <= 1.0:
        raise JianmuError(f"crop_pct must be in (0, 1], got {spec.crop_pct}")
    height, width = image.shape[:2]
    scale = math.floor(spec.input_size / spec.crop_pct) / min(height, width)
    # round() as albumentations SmallestMaxSize does (banker's rounding on exact halves)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        flag = interpolation_flag(spec.interpolation)
        image = cv2.resize(image, (size[1], size[0]), interpolation=flag)
    top = (size[0] - spec.input_size) // 2
    left = (size[1] - spec.input_size) // 2
    return image[top : top + spec.input_size, left : left + spec.input_size]


def normalize(crop: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """The cropped HWC uint8 picture -> CHW float32, normalized with the spec's mean and std."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inverse_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    normalized = (crop.astype(np.float32) - mean) * inverse_std
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))


def load_preprocessed(
    path: str | Path, spec: TransformSpec, timeout: float | None = READ_TIMEOUT
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` within ``timeout`` seconds, decode it (draft-decoding large JPEGs) and
    :func:`preprocess` it; and the quality measures of the picture the model sees
    (:func:`jianmu.data.quality.measure`).

    Raises:
        ImageDecodeError: the file cannot be read as an image.
    """
    picture, probe = open_image(path, decode_size(spec), timeout)
    return preprocess_measured(np.asarray(picture), spec, probe)


def preprocess_measured(
    image: np.ndarray, spec: TransformSpec, probe: ImageProbe
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess` and the quality measures of the cropped picture and of the file
    (``probe``: its stored size and JPEG quality)."""
    picture = crop(image, spec)
    side = min(probe.width, probe.height)
    return normalize(picture, spec), measure(picture, side, probe.jpeg_quality)
