"""Decoding: formats, mode conversion to 8-bit RGB, EXIF orientation, draft decoding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefiles import (
    make_pixels,
    write_cmyk_jpeg,
    write_exif_rotated_jpeg,
    write_gradient_16bit_png,
    write_image,
    write_palette_png,
    write_rgba_png,
    write_text,
    write_truncated_jpeg,
    write_zero_byte,
)
from PIL import Image

from jianmu.data import images
from jianmu.data.images import ImageDecodeError, load_image, open_image, probe_image, to_rgb
from jianmu.errors import JianmuError


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".bmp", ".webp"])
def test_every_format_decodes_to_rgb(tmp_path: Path, suffix: str) -> None:
    path = write_image(tmp_path / f"a{suffix}", seed=1, size=(40, 32))
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (40, 32)
    difference = np.abs(np.asarray(image, dtype=int) - make_pixels(1, (40, 32))).mean()
    assert difference < 6  # lossless formats 0, JPEG/WebP a little


@pytest.mark.parametrize(
    ("writer", "mode"),
    [
        (write_cmyk_jpeg, "CMYK"),
        (write_palette_png, "P"),
        (write_rgba_png, "RGBA"),
        (lambda path: write_image(path, mode="L"), "L"),
        (lambda path: write_image(path, mode="LA"), "LA"),
    ],
)
def test_odd_modes_become_rgb(tmp_path: Path, writer, mode: str) -> None:
    path = writer(tmp_path / ("a.jpg" if mode == "CMYK" else "a.png"))
    assert probe_image(path).mode == mode
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (48, 48)


def test_cmyk_colours_survive(tmp_path: Path) -> None:
    path = write_cmyk_jpeg(tmp_path / "cmyk.jpg", seed=3)
    difference = np.abs(np.asarray(load_image(path), dtype=int) - make_pixels(3)).mean()
    assert difference < 15


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    pixels = np.asarray(load_image(write_rgba_png(tmp_path / "rgba.png", seed=2)))
    assert (pixels[:, :24] == 255).all()
    assert np.array_equal(pixels[:, 24:], make_pixels(2)[:, 24:])


def test_16bit_gradient_keeps_its_range(tmp_path: Path) -> None:
    path = write_gradient_16bit_png(tmp_path / "ramp.png")
    assert probe_image(path).mode == "I;16"
    pixels = np.asarray(load_image(path))
    row = pixels[0, :, 0]
    assert pixels.dtype == np.uint8
    assert row[0] == 0 and row[-1] == 255  # scaled, not clipped at 255
    assert (np.diff(row.astype(int)) >= 0).all()
    assert len(np.unique(row)) > 50  # a ramp, not two levels
    assert abs(int(row[32]) - 130) <= 2  # 65535 * 32/63 / 257


@pytest.mark.parametrize("dtype", [">u2", "<u2", "<i4"])
def test_wide_integer_modes_scale_by_16_bit_range(dtype: str) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=dtype)
    pixels = np.asarray(to_rgb(Image.fromarray(values)))
    assert pixels[0, :, 0].tolist() == [0, 100, 255]


def test_float_images_in_unit_range() -> None:
    pixels = np.asarray(to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))))
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = write_exif_rotated_jpeg(tmp_path / "r.jpg", seed=4, size=(64, 48), orientation=6)
    probe = probe_image(path)
    assert probe.exif_rotated and (probe.width, probe.height) == (48, 64)
    image = load_image(path)
    assert image.size == (48, 64)
    # orientation 6: the stored picture must be turned 90 degrees clockwise to display
    expected = np.rot90(make_pixels(4, (64, 48)), k=-1)
    assert np.abs(np.asarray(image, dtype=int) - expected).mean() < 6
    assert np.abs(np.asarray(image, dtype=int) - np.rot90(expected, 2)).mean() > 20


def test_draft_decoding_keeps_the_shorter_side(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.jpg", seed=5, size=(800, 600))
    assert load_image(path).size == (800, 600)
    assert load_image(path, size=100).size == (200, 150)  # DCT scale 1/4
    assert load_image(path, size=300).size == (400, 300)  # 1/2
    assert load_image(path, size=600).size == (800, 600)
    assert load_image(path, size=1000).size == (800, 600)  # never enlarged


def test_non_jpeg_is_reduced_by_an_integer_factor(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", seed=5, size=(400, 300))
    assert load_image(path, size=100).size == (134, 100)
    assert load_image(path, size=200).size == (400, 300)


@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (write_zero_byte, "zero-byte file"),
        (write_text, "not an image"),
        (write_truncated_jpeg, "truncated image"),
    ],
)
def test_bad_files_raise_with_a_reason(tmp_path: Path, writer, reason: str) -> None:
    path = writer(tmp_path / "bad.jpg")
    with pytest.raises(ImageDecodeError) as raised:
        load_image(path)
    assert raised.value.reason == reason
    assert isinstance(raised.value, JianmuError)
    assert str(path) in str(raised.value)
    probe = probe_image(path)
    assert probe.status == "error" and probe.reason == reason and not probe.ok


def test_truncated_png_is_caught(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", seed=1, size=(64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert probe_image(path).reason == "truncated image"


def test_truncated_jpeg_is_caught_by_the_cheap_probe(tmp_path: Path) -> None:
    path = write_truncated_jpeg(tmp_path / "t.jpg", keep=0.9)
    assert probe_image(path).reason == "truncated image"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_too_many_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = write_image(tmp_path / "a.png", size=(40, 30))
    with pytest.raises(ImageDecodeError) as raised:
        load_image(path)
    assert raised.value.reason == "too large (1200 pixels)"


def test_probe_reports_the_header(tmp_path: Path) -> None:
    probe = probe_image(write_image(tmp_path / "a.webp", size=(40, 30)))
    assert probe.to_dict() == {
        "status": "ok",
        "reason": "",
        "format": "WEBP",
        "mode": "RGB",
        "width": 40,
        "height": 30,
        "exif_rotated": False,
        "frames": 1,
        "jpeg_quality": None,  # not a JPEG
    }


@pytest.mark.parametrize("quality", [5, 30, 75, 95])
def test_a_jpegs_quality_setting_is_read_from_its_table(tmp_path: Path, quality: int) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(make_pixels(1, (64, 48))).save(path, "JPEG", quality=quality)
    assert open_image(path)[1].jpeg_quality == quality
