"""Generators of tiny image files, normal and odd, for tests (a plain module: import, not fixtures).

Every picture is a smooth random pattern drawn from a seed, so two seeds give clearly different
perceptual hashes while a rescaled or recompressed copy stays close to its original.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112


def make_pixels(seed: int, size: tuple[int, int] = (48, 48)) -> np.ndarray:
    """A smooth random RGB picture (``size`` is width, height) as uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(coarse.resize(size, Image.BICUBIC))


def write_image(
    path: Path,
    seed: int = 0,
    size: tuple[int, int] = (48, 48),
    mode: str = "RGB",
    **save_options,
) -> Path:
    """Write a picture from ``seed`` in ``mode``; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(make_pixels(seed, size))
    if mode != "RGB":
        image = image.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_options.setdefault("quality", 95)
    image.save(path, **save_options)
    return path


def write_truncated_jpeg(path: Path, seed: int = 0, keep: float = 0.5) -> Path:
    """A JPEG cut after ``keep`` of its bytes: the header is fine, the pixel data is not."""
    write_image(path, seed, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text(path: Path, text: str = "not a picture, just text\n") -> Path:
    """A text file, whatever the suffix says (e.g. ``notes.jpg``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_cmyk_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (48, 48)) -> Path:
    return write_image(path, seed, size, mode="CMYK")


def write_palette_png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 48)) -> Path:
    return write_image(path, seed, size, mode="P")


def write_rgba_png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 48)) -> Path:
    """RGBA with the left half fully transparent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = make_pixels(seed, size)
    alpha = np.full(pixels.shape[:2], 255, dtype=np.uint8)
    alpha[:, : size[0] // 2] = 0
    Image.fromarray(np.dstack([pixels, alpha]), mode="RGBA").save(path)
    return path


def write_gradient_16bit_png(path: Path, size: tuple[int, int] = (64, 32)) -> Path:
    """A 16-bit grayscale PNG (``I;16``) with a horizontal ramp over the full 0-65535 range."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 65535, size[0]).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (size[1], 1))).save(path)
    return path


def write_exif_rotated_jpeg(
    path: Path, seed: int = 0, size: tuple[int, int] = (64, 48), orientation: int = 6
) -> Path:
    """A JPEG stored ``size`` (width, height) whose EXIF asks viewers to rotate it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(make_pixels(seed, size))
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, quality=95, exif=exif)
    return path


def write_near_duplicate(source: Path, path: Path, scale: float = 0.9, quality: int = 70) -> Path:
    """A rescaled, recompressed JPEG copy of ``source``: different bytes, same picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, Image.BILINEAR).save(path, quality=quality)
    return path


def make_image_folder(
    root: Path,
    classes: dict[str, int],
    size: tuple[int, int] = (48, 48),
    seed: int = 0,
    suffix: str = ".jpg",
) -> Path:
    """``root/<class>/<class>_<i>.jpg`` with ``classes[name]`` distinct pictures per class."""
    offset = seed * 10_000
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            offset += 1
            write_image(root / name / f"{name}_{index:03d}{suffix}", offset, size)
    return root


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (no pixel data): what a
    decompression bomb looks like before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def write_animated_gif(path: Path, frames: int = 3, size: tuple[int, int] = (48, 48)) -> Path:
    """A GIF of ``frames`` different pictures (seeds 0, 1, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(make_pixels(seed, size)) for seed in range(frames)]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100)
    return path


def write_fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes, which none will."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def write_symlink_loops(folder: Path) -> list[Path]:
    """A link to itself and two links to each other: every stat of them fails with ELOOP."""
    folder.mkdir(parents=True, exist_ok=True)
    links = [folder / "self-loop", folder / "ping", folder / "pong"]
    os.symlink(links[0].name, links[0])
    os.symlink(links[2].name, links[1])
    os.symlink(links[1].name, links[2])
    return links
