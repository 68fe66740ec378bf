"""Reading and decoding images: any supported file -> 8-bit RGB, cheaply when less will do.

Every read is bounded: only regular files are opened (a FIFO or a device would block forever), and
the read runs in a daemon thread that is given up after ``timeout`` seconds (a stalled network
share), so that one bad file costs a status line, never the run. Decoding is a hot path. With
``size`` given, a large JPEG is decoded at a reduced DCT scale (``Image.draft``: 1/2, 1/4 or 1/8)
that keeps its shorter side at least ``size``, and other formats are box-reduced by an integer
factor with the same guarantee; the exact resize is left to the transforms. An animated file
(GIF, WebP, APNG) is read as its first frame, and its probe says how many frames it has.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jianmu.errors import JianmuError

# Seconds a file may take to read (data.read_timeout sets it per run).
READ_TIMEOUT = 30.0
# Larger images are refused ("too large"), as a guard against decompression bombs.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Decoding at this size is enough to detect truncation and to compute a perceptual hash.
PROBE_SIZE = 64
# EXIF orientation values other than 1 (normal) ask the viewer to flip or rotate.
_ORIENTATION_TAG = 0x0112
_TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height
# Modes that are converted to RGB without loss of meaning; anything else is "odd" for the audit.
COMMON_MODES = ("RGB", "L")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")


class ImageDecodeError(JianmuError):
    """A file that cannot be decoded into an image; ``reason`` is a short phrase for reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageProbe:
    """What a cheap look at one file found. ``width``/``height`` are as displayed (EXIF applied)."""

    status: Literal["ok", "error"]
    reason: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    exif_rotated: bool = False
    frames: int = 1
    """More than 1: an animated file, of which the first frame is used."""
    jpeg_quality: int | None = None
    """A JPEG's quality setting (1-100, IJG scale) estimated from its luminance table."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def too_small(self, min_side: int) -> bool:
        """The one rule for images too small to judge: the shorter side under ``min_side``."""
        return min(self.width, self.height) < min_side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_image(
    path: str | Path, size: int | None = None, timeout: float | None = READ_TIMEOUT
) -> Image.Image:
    """Read and decode ``path`` into an 8-bit RGB image with its EXIF orientation applied.

    Args:
        path: image file (JPEG, PNG, TIFF, BMP, WebP, GIF, ...).
        size: when given, the image may come back smaller than stored, but its shorter side stays
            at least ``size`` (or the stored size when that is already smaller).
        timeout: seconds the read may take (None: no limit).

    Raises:
        ImageDecodeError: not found, not a regular file, zero-byte, read timed out, not an image,
            truncated, too large or otherwise unreadable.
    """
    return open_image(path, size, timeout)[0]


def open_image(
    path: str | Path, size: int | None = None, timeout: float | None = READ_TIMEOUT
) -> tuple[Image.Image, ImageProbe]:
    """:func:`load_image` and the probe of the file (its stored size, mode, frames)."""
    path = Path(path)
    return decode_image(read_image_bytes(path, timeout), path, size)


def read_image_bytes(path: str | Path, timeout: float | None = READ_TIMEOUT) -> bytes:
    """The bytes of a regular file, read within ``timeout`` seconds (None: no limit).

    Raises:
        ImageDecodeError: "not found", "cannot read (broken link)", "not an image (a folder)",
            "not a regular file", "zero-byte file", "read timed out (after N s)",
            "cannot read (<reason>)".
    """
    path = Path(path)
    if timeout is None:
        return _read_regular_file(path)
    found: dict[str, Any] = {}

    def read() -> None:
        try:
            found["data"] = _read_regular_file(path)
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            found["error"] = error

    # A daemon thread: a read stuck in the kernel (a stalled share) cannot hold up the exit.
    reader = threading.Thread(target=read, name="jianmu-read", daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise ImageDecodeError(path, f"read timed out (after {timeout:g} s)")
    if "error" in found:
        raise found["error"]
    return found["data"]


def _read_regular_file(path: Path) -> bytes:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        reason = "not found" if not os.path.lexists(path) else "cannot read (broken link)"
        raise ImageDecodeError(path, reason) from None
    except OSError as error:
        raise ImageDecodeError(path, f"cannot read ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageDecodeError(path, "not an image (a folder)")
    if not stat.S_ISREG(info.st_mode):
        raise ImageDecodeError(path, "not a regular file")
    if info.st_size == 0:
        raise ImageDecodeError(path, "zero-byte file")
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise ImageDecodeError(path, f"cannot read ({error.strerror or error})") from None


def probe_image(path: str | Path) -> ImageProbe:
    """Header, mode and orientation of ``path``; truncation is found by a small draft decode."""
    return probe_and_thumbnail(Path(path))[0]


def probe_and_thumbnail(
    path: Path, size: int = PROBE_SIZE, data: bytes | None = None
) -> tuple[ImageProbe, Image.Image | None]:
    """Probe ``path`` (or its bytes ``data``, already read) and keep the small RGB decode
    (shorter side >= ``size`` when possible).

    JPEGs are decoded at up to 1/8 scale, which still reads the whole entropy-coded stream, so a
    truncated file is caught without the cost of a full decode. Never raises for a bad file.
    """
    try:
        data = read_image_bytes(path) if data is None else data
        image, probe = decode_image(data, path, size)
    except ImageDecodeError as error:
        return ImageProbe(status="error", reason=error.reason), None
    return probe, image


def decode_image(data: bytes, path: Path, size: int | None) -> tuple[Image.Image, ImageProbe]:
    """Decode the bytes of ``path`` (see :func:`load_image`); ``path`` names it in errors."""
    if not data:
        raise ImageDecodeError(path, "zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            pixels = width * height
            if pixels > MAX_PIXELS:
                raise ImageDecodeError(path, f"too large ({pixels} pixels)")
            format_, mode = image.format or "", image.mode
            frames = int(getattr(image, "n_frames", 1) or 1)
            orientation = _orientation(image)
            jpeg_quality = _jpeg_quality(image) if format_ == "JPEG" else None
            if size is not None and format_ == "JPEG":
                image.draft("RGB", (size, size))
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image) if orientation != 1 else image)
            if size is not None and min(rgb.size) // size >= 2:
                rgb = rgb.reduce(min(rgb.size) // size)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(path, "too large (decompression bomb)") from None
    # Pillow's plugins fail in many ways on damaged files (OSError, SyntaxError, ValueError, struct
    # errors, ...); an audit must report them all as unreadable rather than stop.
    except Exception as error:  # noqa: BLE001
        raise ImageDecodeError(path, _describe(error)) from None
    if orientation in _TRANSPOSING:
        width, height = height, width
    probe = ImageProbe(
        status="ok",
        format=format_,
        mode=mode,
        width=width,
        height=height,
        exif_rotated=orientation != 1,
        frames=frames,
        jpeg_quality=jpeg_quality,
    )
    return rgb, probe


# The IJG (libjpeg) standard luminance table, row by row as Pillow reports tables.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)  # fmt: skip


def _jpeg_quality(image: Image.Image) -> int | None:
    """The quality setting a JPEG was written with, from the scale of its luminance table against
    the IJG standard table (exact for files written by libjpeg, Pillow and most cameras; an
    estimate for others). None when the file carries no table."""
    tables = getattr(image, "quantization", None) or {}
    table = tables.get(0)
    if table is None or len(table) != 64:
        return None
    values = np.asarray(table, dtype=np.float64)
    unclipped = (values > 1) & (values < 255)  # libjpeg clips entries to 1..255
    ratios = (values / _IJG_LUMINANCE)[unclipped] if unclipped.any() else values / _IJG_LUMINANCE
    scale = float(np.median(ratios) * 100.0)
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(round(min(100.0, max(1.0, quality))))


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16/32-bit scaled to 0-255, alpha over white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer or float pixels to 0-255: 16-bit by 1/257, wider ranges by their maximum."""
    values = array.astype(np.float32)
    if array.dtype.kind == "f":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else float(np.nanmax(values))
    elif array.dtype.itemsize == 2 or (values.size and values.max() > 255):
        top = 65535.0 if not values.size or values.max() <= 65535 else float(values.max())
    else:
        top = 255.0
    scaled = np.nan_to_num(values / max(top, 1e-12) * 255.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _describe(error: Exception) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lowered = message.lower()
    if any(word in lowered for word in ("truncat", "broken data stream", "end of file", "eof")):
        return "truncated image"
    if isinstance(error, EOFError):
        return "truncated image"
    return f"unreadable ({message[:80]})"
