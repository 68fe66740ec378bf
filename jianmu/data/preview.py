"""A PNG grid of augmented training samples, to check that an augmentation preset looks natural.

Each source image gets one row (or more, when ``per_image`` exceeds ``columns``): the original,
fitted into a tile and labelled, then ``per_image`` augmented views exactly as training makes them
(before normalization).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jianmu.config import AugmentConfig
from jianmu.data.images import load_image
from jianmu.data.transforms import build_train_transform
from jianmu.errors import JianmuError

PADDING = 4
BACKGROUND = (32, 32, 32)
_LABEL_HEIGHT = 14


def render_preview(
    augment: AugmentConfig,
    image_paths: list[Path],
    out_png: Path,
    input_size: int,
    columns: int = 4,
    per_image: int = 4,
    seed: int = 0,
    interpolation: str = "bicubic",
) -> Path:
    """Write a grid of augmented samples to ``out_png`` and return its path.

    Args:
        augment: the augmentation to preview (geometry and appearance).
        image_paths: source images, one block of rows each.
        out_png: the PNG to write (parent folders are created).
        input_size: tile side, the model's input size.
        columns: augmented views per row; the original takes an extra first column.
        per_image: augmented views per source image.
        seed: the same seed draws the same augmentations.
        interpolation: resize method, as for training.

    Raises:
        JianmuError: no images, bad sizes, an unreadable image or a bad augmentation.
    """
    if not image_paths:
        raise JianmuError("no images to preview")
    if columns < 1 or per_image < 1 or input_size < 8:
        raise JianmuError("preview needs columns >= 1, per_image >= 1 and input_size >= 8")
    identity = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # normalize=False: mean/std are not used
    transform = build_train_transform(
        augment, input_size, *identity, interpolation, normalize=False, seed=seed
    )
    views = min(columns, per_image)
    rows_per_image = math.ceil(per_image / columns)
    step = input_size + PADDING
    grid = Image.new(
        "RGB",
        (PADDING + (1 + views) * step, PADDING + len(image_paths) * rows_per_image * step),
        BACKGROUND,
    )
    for index, path in enumerate(image_paths):
        image = load_image(path, size=input_size)
        top = PADDING + index * rows_per_image * step
        grid.paste(_labelled_original(image, Path(path).name, input_size), (PADDING, top))
        pixels = np.asarray(image)
        for view in range(per_image):
            row, column = divmod(view, columns)
            tile = Image.fromarray(np.ascontiguousarray(transform(pixels)))
            grid.paste(tile, (PADDING + (1 + column) * step, top + row * step))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_png, "PNG")
    return out_png


def _labelled_original(image: Image.Image, name: str, size: int) -> Image.Image:
    """The whole original fitted into a ``size`` square, with 'original' and its file name."""
    tile = Image.new("RGB", (size, size), BACKGROUND)
    fitted = image.copy()
    fitted.thumbnail((size, size), Image.Resampling.BICUBIC)
    tile.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    label = f"original  {name}"
    max_chars = max(4, size // 6)
    if len(label) > max_chars:
        label = label[: max_chars - 3] + "..."
    draw.rectangle((0, 0, size, _LABEL_HEIGHT), fill=(0, 0, 0))
    draw.text((3, 1), label, fill=(255, 255, 255), font=font)
    return tile
