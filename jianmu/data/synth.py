"""Procedural sample sets for trying jianmu without real data: end grain, weed seeds, insects.

Nothing here is a photograph. Every set is labelled synthetic wherever it appears: ``SYNTHETIC.md``
at its root, and "jianmu synthetic" in each JPEG's comment and EXIF ImageDescription. A class is a
set of procedural parameters (for wood: growth rings, vessels, rays, parenchyma, colour); a
specimen is one piece drawn from its class with its own variation (pith position, ring curvature,
colour); an image is one view of a specimen (position, rotation, zoom, exposure, vignetting, blur,
noise). Images of one specimen share structure, so splitting by specimen matters here as it does
for real collections.

Everything is vectorised numpy over the pixel grid; the same ``seed`` writes byte-identical files.
Lengths are in design units: one unit is one pixel of a 256-pixel image.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from jianmu import __version__
from jianmu.config import DOMAINS
from jianmu.errors import JianmuError

MARKER = "jianmu synthetic"
JPEG_QUALITY = 90
_DESIGN_SIZE = 256.0
_SYNTH_FILE = re.compile(r"synth_.+\.jpg")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")
_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
_DOMAIN_SALT = {"wood": 11, "weed_seed": 23, "insect": 37}

Rgb = tuple[float, float, float]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate_dataset` wrote: ``counts`` maps class folder name to image count."""

    root: Path
    domain: str
    class_names: list[str]
    counts: dict[str, int]
    specimens_per_class: int
    seed: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def generate_dataset(
    out: Path,
    domain: str = "wood",
    classes: int = 5,
    per_class: int = 20,
    size: int = 256,
    specimens_per_class: int = 4,
    seed: int = 0,
    class_names: list[str] | None = None,
    progress: Progress | None = None,
) -> SynthResult:
    """Write a synthetic image set as ``out/<class>/<specimen>/synth_<class>_<specimen>_<nn>.jpg``.

    Args:
        out: a new or empty folder, or a previous synthetic set (which is replaced). Any other
            non-empty folder is refused, so real data is never overwritten.
        domain: ``wood`` (end-grain textures), ``weed_seed`` or ``insect``.
        classes: number of classes; must equal ``len(class_names)`` when names are given.
        per_class: images per class, spread round-robin over the specimens.
        size: side of the square images in pixels.
        specimens_per_class: physical pieces per class (sub-folders ``s01``, ``s02``, ...).
        seed: the same seed writes byte-identical files.
        class_names: class folder names (e.g. ``Dalbergia_odorifera``); default
            ``synthetic_class_01``, ...
        progress: called as ``progress(done, total)`` after each image.

    Raises:
        JianmuError: bad arguments, or ``out`` holds something other than a synthetic set.
    """
    if domain not in DOMAINS:
        raise JianmuError(
            f"unknown synthetic domain {domain!r}; choose one of {', '.join(DOMAINS)}"
        )
    names = _resolve_class_names(classes, class_names)
    if per_class < 1 or specimens_per_class < 1:
        raise JianmuError("per_class and specimens_per_class must be at least 1")
    if not 32 <= size <= 4096:
        raise JianmuError(f"synthetic image size must be between 32 and 4096 pixels, got {size}")
    out = Path(out)
    _prepare_out(out)
    seed_key = seed % 2**64  # numpy seed sequences take non-negative integers

    sample_class, sample_specimen, render = _GENERATORS[domain]
    salt = _DOMAIN_SALT[domain]
    class_params = [
        sample_class(
            np.random.default_rng([seed_key, salt, index]), index, _offsets(seed_key, salt)
        )
        for index in range(len(names))
    ]
    _write_readme(out, domain, names, class_params, per_class, size, specimens_per_class, seed)

    digits = max(2, len(str(specimens_per_class)))
    image_digits = max(2, len(str(math.ceil(per_class / specimens_per_class))))
    total, done = len(names) * per_class, 0
    counts: dict[str, int] = {}
    for class_index, (name, params) in enumerate(zip(names, class_params, strict=True)):
        specimens = [
            sample_specimen(
                params, np.random.default_rng([seed_key, salt, class_index, specimen, 1]), specimen
            )
            for specimen in range(specimens_per_class)
        ]
        for image_index in range(per_class):
            specimen, number = image_index % specimens_per_class, image_index // specimens_per_class
            specimen_name = f"s{specimen + 1:0{digits}d}"
            rng = np.random.default_rng([seed_key, salt, class_index, specimen, 2, number])
            pixels = render(specimens[specimen], rng, size)
            folder = out / name / specimen_name
            folder.mkdir(parents=True, exist_ok=True)
            file_name = f"synth_{name}_{specimen_name}_{number + 1:0{image_digits}d}.jpg"
            _save_jpeg(pixels, folder / file_name, f"{MARKER}: procedural {domain} image, not real")
            done += 1
            if progress is not None:
                progress(done, total)
        counts[name] = per_class
    return SynthResult(out, domain, names, counts, specimens_per_class, seed)


def is_synthetic_set(root: Path) -> bool:
    """True when ``root`` holds a ``SYNTHETIC.md`` written by :func:`generate_dataset`."""
    readme = Path(root) / "SYNTHETIC.md"
    return readme.is_file() and MARKER in readme.read_text(encoding="utf-8", errors="replace")


# --- arguments and output folder -------------------------------------------------------------


def _resolve_class_names(classes: int, class_names: list[str] | None) -> list[str]:
    if class_names is None:
        if classes < 1:
            raise JianmuError(f"classes must be at least 1, got {classes}")
        return [f"synthetic_class_{index + 1:02d}" for index in range(classes)]
    names = [str(name) for name in class_names]
    if len(names) != classes:
        raise JianmuError(f"{len(names)} class names given but classes={classes}")
    for name in names:
        if not _SAFE_NAME.fullmatch(name) or name.endswith((" ", ".")):
            raise JianmuError(f"class name {name!r} is not a safe folder name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise JianmuError(f"duplicate class names: {', '.join(duplicates)}")
    return names


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or empty a previous synthetic set; refuse anything else."""
    if out.exists() and (out.is_symlink() or not out.is_dir()):
        raise JianmuError(f"{out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    files, folders = [], []
    for folder, dirnames, filenames in os.walk(out, followlinks=False):
        folders.extend(Path(folder) / name for name in dirnames)
        files.extend(Path(folder) / name for name in filenames)
    if not files and not folders:
        return
    readme = out / "SYNTHETIC.md"
    if not is_synthetic_set(out):
        raise JianmuError(
            f"{out} is not empty and is not a jianmu synthetic set; refusing to write into it "
            "(choose a new or empty folder)"
        )
    foreign = [
        path
        for path in files + [f for f in folders if f.is_symlink()]
        if path != readme and (path.is_symlink() or not _SYNTH_FILE.fullmatch(path.name))
    ]
    if foreign:
        raise JianmuError(
            f"{out} is a synthetic set but also holds {foreign[0].relative_to(out)}; "
            "refusing to replace it (move that file or choose a new folder)"
        )
    for path in files:
        path.unlink()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        folder.rmdir()


def _write_readme(
    out: Path,
    domain: str,
    names: list[str],
    class_params: list[Any],
    per_class: int,
    size: int,
    specimens_per_class: int,
    seed: int,
) -> None:
    lines = [
        f"<!-- {MARKER} -->",
        "# SYNTHETIC DATA: not real images",
        "",
        f"Every image under this folder was procedurally generated by jianmu {__version__} "
        "(`jianmu.data.synth`). None is a photograph of a real specimen; the class names are "
        "placeholders and the images say nothing about those species. Use this set only to try "
        "the tool and to test pipelines, never to judge a model meant for real inspections.",
        "",
        f"Each JPEG carries '{MARKER}' in its comment and EXIF ImageDescription.",
        "",
        "## Generator settings",
        "",
        f"- domain: {domain}",
        f"- classes: {len(names)}",
        f"- images per class: {per_class}",
        f"- specimens per class: {specimens_per_class}",
        f"- image size: {size} x {size} px, JPEG quality {JPEG_QUALITY}",
        f"- seed: {seed} (the same settings and seed give byte-identical files)",
        "",
        "Layout: `<class>/<specimen>/synth_<class>_<specimen>_<nn>.jpg`.",
        "",
        "## Class parameters (lengths in pixels of a 256-pixel image)",
        "",
    ]
    for name, params in zip(names, class_params, strict=True):
        described = ", ".join(f"{key}={_format(value)}" for key, value in asdict(params).items())
        lines.append(f"- `{name}`: {described}")
    (out / "SYNTHETIC.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_format(item) for item in value) + ")"
    return str(value)


def _save_jpeg(pixels: np.ndarray, path: Path, description: str) -> None:
    exif = Image.Exif()
    exif[_EXIF_IMAGE_DESCRIPTION] = description
    exif[_EXIF_SOFTWARE] = f"jianmu {__version__}"
    Image.fromarray(pixels).save(
        path, "JPEG", quality=JPEG_QUALITY, comment=description.encode(), exif=exif.tobytes()
    )


# --- shared procedural helpers -----------------------------------------------------------------


def _offsets(seed: int, salt: int) -> np.ndarray:
    """Per-seed offsets into the categorical cycles, so each seed mixes features differently."""
    return np.random.default_rng([seed, salt, 999_983]).integers(0, 1000, size=8)


def _pick(options: tuple, index: int, offset: int) -> Any:
    return options[(index + int(offset)) % len(options)]


def _jitter(color: Rgb, rng: np.random.Generator, amount: float) -> Rgb:
    shifted = np.clip(np.asarray(color) * rng.uniform(1 - amount, 1 + amount, 3), 0.0, 1.0)
    return tuple(float(c) for c in shifted)  # type: ignore[return-value]


def _grid(
    size: int, zoom: float, angle: float, shift: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel centres in design units (rotated, zoomed, shifted) and design units per pixel."""
    unit = _DESIGN_SIZE / size * zoom
    axis = (np.arange(size, dtype=np.float32) - size / 2 + 0.5) * unit
    x, y = np.meshgrid(axis, axis)
    cos, sin = math.cos(angle), math.sin(angle)
    return x * cos - y * sin + shift[0], x * sin + y * cos + shift[1], unit


def _hash01(salt: int, *keys: np.ndarray) -> np.ndarray:
    """A float in [0, 1) per element, from integer keys (splitmix64 mixing, no state)."""
    with np.errstate(over="ignore"):
        value = np.full(np.shape(keys[0]), (salt * 0x9E3779B97F4A7C15) % 2**64, dtype=np.uint64)
        for key in keys:
            value ^= np.asarray(key).astype(np.int64).astype(np.uint64)
            value += np.uint64(0x9E3779B97F4A7C15)
            value ^= value >> np.uint64(30)
            value *= np.uint64(0xBF58476D1CE4E5B9)
            value ^= value >> np.uint64(27)
            value *= np.uint64(0x94D049BB133111EB)
            value ^= value >> np.uint64(31)
    return ((value >> np.uint64(40)).astype(np.float32)) / np.float32(2**24)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _coverage(signed_distance: np.ndarray, unit: float) -> np.ndarray:
    """Antialiased inside-ness of a shape from its signed distance (negative inside)."""
    return np.clip(0.5 - signed_distance / unit, 0.0, 1.0)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1] with ``cells`` features across the image."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 1.5


def _mix(base: np.ndarray, color: Rgb | np.ndarray, amount: np.ndarray) -> np.ndarray:
    amount = amount[..., None]
    return base * (1.0 - amount) + np.asarray(color, dtype=np.float32) * amount


def _camera(
    image: np.ndarray, rng: np.random.Generator, vignette: tuple[float, float] = (0.05, 0.3)
) -> np.ndarray:
    """What a phone behind a magnifier adds: exposure, white balance, vignetting, blur, noise."""
    size = image.shape[0]
    image = image * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    radius2 = axis[None, :] ** 2 + axis[:, None] ** 2
    image = image * (1.0 - rng.uniform(*vignette) * radius2 / 2.0)[..., None]
    image = image + rng.normal(0.0, rng.uniform(0.004, 0.018), image.shape).astype(np.float32)
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        blurred = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        pixels = np.asarray(blurred)
    return pixels


def _shaded(
    nx: np.ndarray, ny: np.ndarray, height: np.ndarray, light: np.ndarray, gloss: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lambert diffuse and a Blinn specular term for a bump with normal (nx, ny, height)."""
    norm = np.sqrt(nx * nx + ny * ny + height * height) + 1e-6
    diffuse = np.clip((nx * light[0] + ny * light[1] + height * light[2]) / norm, 0.0, 1.0)
    half = light + np.array([0.0, 0.0, 1.0], dtype=np.float32)
    half = half / np.linalg.norm(half)
    specular = np.clip((nx * half[0] + ny * half[1] + height * half[2]) / norm, 0.0, 1.0)
    return diffuse, gloss * specular**40


def _light(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-2.6, -1.8)
    light = np.array([math.cos(angle) * 0.6, math.sin(angle) * 0.6, 0.8], dtype=np.float32)
    return light / np.linalg.norm(light)


# --- wood: end grain through a 10x magnifier ---------------------------------------------------

_WOOD_COLORS: tuple[Rgb, ...] = (
    (0.82, 0.66, 0.48),  # pale yellow-brown
    (0.60, 0.33, 0.22),  # reddish brown
    (0.36, 0.21, 0.17),  # dark purple-brown
    (0.74, 0.52, 0.32),  # golden brown
    (0.70, 0.40, 0.26),  # orange-red
    (0.32, 0.23, 0.16),  # dark chocolate
    (0.60, 0.48, 0.35),  # olive-brown
)


@dataclass(frozen=True)
class WoodClass:
    """Procedural anatomy of one synthetic wood class."""

    color: Rgb
    ring_width: float
    ring_contrast: float
    porosity: str  # diffuse | semi-ring | ring
    pore_radius: float
    pore_spacing: float
    pore_density: float
    max_multiple: int  # 1 = solitary vessels; up to 4 in radial multiples
    deposits: float  # fraction of vessels filled with light deposits
    ray_spacing: float
    ray_width: float
    ray_contrast: float  # > 0 lighter than the fibres, < 0 darker
    parenchyma: str  # none | banded | aliform | marginal
    band_spacing: float


@dataclass(frozen=True)
class _WoodSpecimen:
    kind: WoodClass
    salt: int
    pith: tuple[float, float]
    wobble: tuple[float, float, float, float, float, float]
    ring_scale: float
    ring_phase: tuple[float, float]
    color: Rgb
    pore_scale: float
    parenchyma_color: Rgb = field(default=(0.9, 0.82, 0.62))


def _wood_class(rng: np.random.Generator, index: int, offsets: np.ndarray) -> WoodClass:
    parenchyma = _pick(("none", "banded", "aliform", "marginal"), index, offsets[1])
    return WoodClass(
        color=_jitter(_pick(_WOOD_COLORS, index, offsets[0]), rng, 0.06),
        ring_width=float(rng.uniform(35, 110)),
        ring_contrast=float(rng.uniform(0.08, 0.35)),
        porosity=_pick(("diffuse", "semi-ring", "ring"), index, offsets[2]),
        pore_radius=float(rng.uniform(2.2, 5.0)),
        pore_spacing=float(rng.uniform(14, 26)),
        pore_density=float(rng.uniform(0.45, 0.85)),
        max_multiple=int(_pick((1, 2, 3, 4), index, offsets[3])),
        deposits=float(_pick((0.0, 0.0, 0.3), index, offsets[4])),
        ray_spacing=float(rng.uniform(4.0, 10.0)),
        ray_width=float(rng.uniform(0.5, 1.2)),
        ray_contrast=float(rng.choice([-1, 1]) * rng.uniform(0.08, 0.25)),
        parenchyma=parenchyma,
        band_spacing=float(rng.uniform(6.0, 14.0)),
    )


def _wood_specimen(kind: WoodClass, rng: np.random.Generator, specimen: int) -> _WoodSpecimen:
    distance, angle = rng.uniform(500, 2200), rng.uniform(0, 2 * math.pi)
    return _WoodSpecimen(
        kind=kind,
        salt=int(rng.integers(0, 2**31)),
        pith=(distance * math.cos(angle), distance * math.sin(angle)),
        wobble=(
            rng.uniform(3, 18),
            rng.uniform(250, 700),
            rng.uniform(0, 2 * math.pi),
            rng.uniform(1, 6),
            rng.uniform(60, 180),
            rng.uniform(0, 2 * math.pi),
        ),
        ring_scale=float(rng.uniform(0.8, 1.25)),
        ring_phase=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
        color=_jitter(kind.color, rng, 0.08),
        pore_scale=float(rng.uniform(0.9, 1.1)),
        parenchyma_color=_jitter((0.92, 0.84, 0.64), rng, 0.05),
    )


def _ring_position(u: np.ndarray, width: float, phase: tuple[float, float]) -> np.ndarray:
    """Ring count at radius ``u``; its fractional part is the place within the ring (0 = start)."""
    return (
        u / width
        + 0.22 * np.sin(u / (2.9 * width) + phase[0])
        + 0.12 * np.sin(u / (1.3 * width) + phase[1])
    )


def _render_wood(specimen: _WoodSpecimen, rng: np.random.Generator, size: int) -> np.ndarray:
    kind = specimen.kind
    shift = (float(rng.uniform(-220, 220)), float(rng.uniform(-220, 220)))
    x, y, unit = _grid(size, rng.uniform(0.9, 1.1), rng.uniform(0, 2 * math.pi), shift)

    # Polar frame around a far-away pith: u along the radius, v the arc length across it.
    px, py = specimen.pith
    distance = math.hypot(px, py)
    dx, dy = x - px, y - py
    cos, sin = -px / distance, -py / distance
    v = np.arctan2(dy * cos - dx * sin, dx * cos + dy * sin) * distance
    a1, l1, p1, a2, l2, p2 = specimen.wobble
    u = np.hypot(dx, dy) + a1 * np.sin(v / l1 + p1) + a2 * np.sin(v / l2 + p2)

    width = kind.ring_width * specimen.ring_scale
    rings = _ring_position(u, width, specimen.ring_phase)
    within = rings - np.floor(rings)
    fibre = 0.05 * _value_noise(rng, size, 10) + 0.03 * _value_noise(rng, size, 60)
    shade = 1.0 - kind.ring_contrast * _smoothstep(0.5, 0.97, within) + fibre
    image = np.asarray(specimen.color, dtype=np.float32) * shade[..., None]

    pores, halo, filled, depth = _vessels(specimen, u, v, width, unit)
    parenchyma = halo
    if kind.parenchyma == "banded":
        parenchyma = np.maximum(parenchyma, _bands(specimen, u, v, kind.band_spacing, unit))
    elif kind.parenchyma == "marginal":
        edge = np.minimum(within, 1.0 - within) * width
        parenchyma = np.maximum(parenchyma, np.exp(-((edge / max(1.3, unit)) ** 2)))
    image = _mix(image, specimen.parenchyma_color, 0.5 * parenchyma)
    ray_color = np.clip(np.asarray(specimen.color) * (1.6 if kind.ray_contrast > 0 else 0.5), 0, 1)
    image = _mix(image, ray_color, _rays(specimen, u, v, unit))
    lumen = np.asarray(specimen.color, dtype=np.float32)[None, None] * depth[..., None]
    image = _mix(image, lumen, pores * (1 - filled))
    image = _mix(image, (0.88, 0.80, 0.55), pores * filled)
    return _camera(image, rng)


def _vessels(
    specimen: _WoodSpecimen, u: np.ndarray, v: np.ndarray, ring_width: float, unit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vessels (pores) on a jittered grid in the (u, v) frame.

    Returns coverage, parenchyma halo, deposit flag and lumen brightness per pixel.

    Each cell holds at most one vessel group, kept inside the cell so that only the own cell needs
    testing; groups are radial multiples of up to ``max_multiple`` touching vessels.
    """
    kind, salt = specimen.kind, specimen.salt
    radius0 = kind.pore_radius * specimen.pore_scale
    wings = (1.7, 2.8) if kind.parenchyma == "aliform" else (1.0, 1.0)
    cell_v = max(kind.pore_spacing, 2 * radius0 * 1.5 * wings[1] + 2)
    cell_u = max(kind.pore_spacing, (kind.max_multiple * 1.8 + 0.4) * radius0 * 1.5 + 2)
    iu, iv = np.floor(u / cell_u), np.floor(v / cell_v)
    h = [_hash01(salt + c, iu, iv) for c in range(6)]

    start = iu * cell_u + 0.5 * cell_u  # ring position decides ring-porous size and density
    rings = _ring_position(start, ring_width, specimen.ring_phase)
    early = 1.0 - _smoothstep(0.12, 0.3, rings - np.floor(rings))
    if kind.porosity == "ring":
        size_factor, density = 0.55 + 0.95 * early, kind.pore_density * (0.45 + 0.9 * early)
    elif kind.porosity == "semi-ring":
        place = rings - np.floor(rings)
        size_factor, density = 1.25 - 0.5 * place, kind.pore_density * (1.2 - 0.6 * place)
    else:
        size_factor, density = np.float32(1.0), np.float32(kind.pore_density)
    present = h[0] < density
    count = 1 + np.floor(h[3] * kind.max_multiple * 0.999)
    fits = np.minimum(  # the largest radius whose group still fits its cell
        (cell_u - 1) / ((count - 1) * 1.8 + 2 * wings[0]), (cell_v - 1) / (2 * wings[1])
    )
    radius = np.minimum(radius0 * size_factor * (0.75 + 0.5 * h[4]), fits)
    step = 1.8 * radius
    extent_u = (count - 1) * step + 2 * radius * wings[0]
    extent_v = 2 * radius * wings[1]
    first = iu * cell_u + radius * wings[0] + h[1] * np.maximum(cell_u - extent_u, 0)
    centre_v = iv * cell_v + radius * wings[1] + h[2] * np.maximum(cell_v - extent_v, 0)
    dv = v - centre_v
    distance = np.full(u.shape, np.inf, dtype=np.float32)
    halo_distance = np.full(u.shape, np.inf, dtype=np.float32)
    for member in range(kind.max_multiple):
        du = u - (first + member * step)
        valid = member < count
        distance = np.where(valid, np.minimum(distance, np.hypot(du / 1.12, dv)), distance)
        scaled = np.hypot(du / (radius * wings[0]), dv / (radius * wings[1]))
        halo_distance = np.where(valid, np.minimum(halo_distance, scaled), halo_distance)
    pores = _coverage(distance - radius, 1.6 * unit) * present
    halo = np.zeros_like(pores)
    if kind.parenchyma == "aliform":
        halo = _smoothstep(1.0, 0.85, halo_distance) * present
    filled = (h[5] < kind.deposits).astype(np.float32)
    # A vessel's lumen is a shadowed hole: darkest at its centre, a little lighter at the rim.
    depth = 0.1 + 0.1 * h[1] + 0.15 * np.clip(distance / np.maximum(radius, 1e-3), 0, 1) ** 2
    return pores.astype(np.float32), halo.astype(np.float32), filled, depth.astype(np.float32)


def _rays(specimen: _WoodSpecimen, u: np.ndarray, v: np.ndarray, unit: float) -> np.ndarray:
    """Fine radial lines at jittered tangential spacing, broken into long segments."""
    kind, salt = specimen.kind, specimen.salt + 100
    position = v / kind.ray_spacing
    index = np.floor(position)
    centre = 0.25 + 0.5 * _hash01(salt, index)
    width = kind.ray_width * (0.6 + 0.8 * _hash01(salt + 1, index))
    distance = np.abs(position - index - centre) * kind.ray_spacing
    segment = np.floor(u / 70.0 + _hash01(salt + 2, index))
    present = _hash01(salt + 3, index, segment) < 0.85
    visible = np.minimum(1.0, width / unit)  # rays narrower than a pixel only tint it
    line = np.exp(-((distance / np.maximum(width, 0.5 * unit)) ** 2))
    return (line * visible * present * min(1.0, 2.0 * abs(kind.ray_contrast))).astype(np.float32)


def _bands(
    specimen: _WoodSpecimen, u: np.ndarray, v: np.ndarray, spacing: float, unit: float
) -> np.ndarray:
    """Thin tangential parenchyma bands, slightly wavy and broken."""
    salt = specimen.salt + 200
    position = (u + 0.8 * np.sin(v / 40.0 + specimen.ring_phase[0])) / spacing
    index = np.floor(position)
    distance = np.abs(position - index - 0.5) * spacing
    present = _hash01(salt, index, np.floor(v / 45.0 + _hash01(salt + 1, index))) < 0.7
    return np.exp(-((distance / max(0.8, 0.8 * unit)) ** 2)) * present


# --- weed seeds: one seed on a plain background -------------------------------------------------

_SEED_COLORS: tuple[Rgb, ...] = (
    (0.13, 0.11, 0.10),  # black
    (0.38, 0.24, 0.13),  # dark brown
    (0.70, 0.56, 0.36),  # tan
    (0.55, 0.22, 0.13),  # reddish
    (0.80, 0.68, 0.30),  # yellow
    (0.50, 0.48, 0.42),  # grey
)


@dataclass(frozen=True)
class SeedClass:
    """Procedural shape and surface of one synthetic seed class."""

    color: Rgb
    length: float
    aspect: float
    shape: str  # ellipse | egg | kidney
    texture: str  # smooth | reticulate | striate | tuberculate
    texture_scale: float
    gloss: float
    hilum: str  # end | side | none


@dataclass(frozen=True)
class _SeedSpecimen:
    kind: SeedClass
    color: Rgb
    length: float
    aspect: float


def _seed_class(rng: np.random.Generator, index: int, offsets: np.ndarray) -> SeedClass:
    texture = _pick(("smooth", "reticulate", "striate", "tuberculate"), index, offsets[1])
    return SeedClass(
        color=_jitter(_pick(_SEED_COLORS, index, offsets[0]), rng, 0.06),
        length=float(rng.uniform(80, 160)),
        aspect=float(rng.uniform(0.4, 0.9)),
        shape=_pick(("ellipse", "egg", "kidney"), index, offsets[2]),
        texture=texture,
        texture_scale=float(rng.uniform(4.0, 9.0)),
        gloss=float(rng.uniform(0.3, 0.8) if texture == "smooth" else rng.uniform(0.0, 0.25)),
        hilum=_pick(("end", "side", "none"), index, offsets[3]),
    )


def _seed_specimen(kind: SeedClass, rng: np.random.Generator, specimen: int) -> _SeedSpecimen:
    return _SeedSpecimen(
        kind=kind,
        color=_jitter(kind.color, rng, 0.1),
        length=kind.length * float(rng.uniform(0.9, 1.1)),
        aspect=float(np.clip(kind.aspect * rng.uniform(0.93, 1.07), 0.3, 0.98)),
    )


def _render_seed(specimen: _SeedSpecimen, rng: np.random.Generator, size: int) -> np.ndarray:
    kind = specimen.kind
    shift = (float(rng.uniform(-25, 25)), float(rng.uniform(-25, 25)))
    a, b, unit = _grid(size, rng.uniform(0.92, 1.08), rng.uniform(0, 2 * math.pi), shift)
    half_length = specimen.length / 2
    half_width = half_length * specimen.aspect
    p, q = a / half_length, b / half_width
    if kind.shape == "egg":
        q = q / (1.0 + 0.3 * p)
    distance = np.hypot(p, q)
    inside = _coverage((distance - 1.0) * half_width, unit)
    if kind.shape == "kidney":
        notch = np.hypot(p / 0.45, (q - 1.35) / 0.6)
        inside = inside * (1.0 - _coverage((notch - 1.0) * half_width * 0.5, unit))

    background = np.asarray(_jitter((0.90, 0.89, 0.86), rng, 0.04), dtype=np.float32)
    light = _light(rng)
    shadow_distance = np.hypot((a - 6) / half_length, (b - 7) / half_width)
    shadow = 0.35 * np.clip((1.25 - shadow_distance) / 0.35, 0.0, 1.0)
    image = background * (1.0 - shadow + 0.04 * _value_noise(rng, size, 6))[..., None]

    height = np.sqrt(np.clip(1.0 - distance**2, 0.0, 1.0))
    diffuse, specular = _shaded(p, q, height * 1.3, light, kind.gloss)
    texture = _seed_texture(kind, a, b)
    surface = (0.3 + 0.8 * diffuse) * (1.0 - 0.35 * texture)
    seed = np.asarray(specimen.color, dtype=np.float32) * surface[..., None] + specular[..., None]
    if kind.hilum != "none":
        centre = (0.82, 0.0) if kind.hilum == "end" else (0.0, 0.78)
        scar = np.hypot((p - centre[0]) / 0.12, (q - centre[1]) / 0.2)
        seed = _mix(seed, (0.85, 0.80, 0.68), _coverage((scar - 1.0) * 0.12 * half_length, unit))
    return _camera(_mix(image, seed, inside), rng, vignette=(0.0, 0.12))


def _seed_texture(kind: SeedClass, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = kind.texture_scale
    if kind.texture == "reticulate":
        fa, fb = a / scale - np.floor(a / scale), b / scale - np.floor(b / scale)
        edge = np.minimum(np.minimum(fa, 1 - fa), np.minimum(fb, 1 - fb))
        return 1.0 - _smoothstep(0.0, 0.15, edge)
    if kind.texture == "striate":
        return (0.5 + 0.5 * np.cos(2 * math.pi * b / scale)) ** 4
    if kind.texture == "tuberculate":
        fa, fb = a / scale - np.floor(a / scale) - 0.5, b / scale - np.floor(b / scale) - 0.5
        return -_smoothstep(0.35, 0.15, np.hypot(fa, fb))  # raised light bumps
    return np.zeros_like(a)


# --- insects: dorsal view, segmented body, legs and antennae ------------------------------------

_INSECT_COLORS: tuple[Rgb, ...] = (
    (0.15, 0.12, 0.10),  # black
    (0.45, 0.26, 0.12),  # chestnut
    (0.62, 0.50, 0.30),  # straw
    (0.55, 0.15, 0.10),  # red
    (0.25, 0.32, 0.18),  # dark green
)
_PATTERN_COLORS: tuple[Rgb, ...] = ((0.85, 0.70, 0.20), (0.08, 0.07, 0.06))


@dataclass(frozen=True)
class InsectClass:
    """Procedural body plan of one synthetic insect class."""

    color: Rgb
    pattern_color: Rgb
    length: float
    head: float
    thorax: tuple[float, float]
    abdomen: tuple[float, float]
    pattern: str  # plain | stripes | spots | elytra
    segments: int
    leg_length: float
    leg_width: float
    antenna_length: float
    antenna_club: bool


@dataclass(frozen=True)
class _InsectSpecimen:
    kind: InsectClass
    color: Rgb
    length: float
    leg_angles: tuple[float, ...]


def _insect_class(rng: np.random.Generator, index: int, offsets: np.ndarray) -> InsectClass:
    color = _pick(_INSECT_COLORS, index, offsets[0])
    return InsectClass(
        color=_jitter(color, rng, 0.06),
        pattern_color=_jitter(
            _pick(((0.85, 0.7, 0.2), (0.08, 0.07, 0.06)), index, offsets[4]), rng, 0.05
        ),
        length=float(rng.uniform(120, 190)),
        head=float(rng.uniform(0.07, 0.12)),
        thorax=(float(rng.uniform(0.18, 0.28)), float(rng.uniform(0.18, 0.32))),
        abdomen=(float(rng.uniform(0.38, 0.55)), float(rng.uniform(0.22, 0.42))),
        pattern=_pick(("plain", "stripes", "spots", "elytra"), index, offsets[1]),
        segments=int(rng.integers(4, 8)),
        leg_length=float(rng.uniform(0.35, 0.7)),
        leg_width=float(rng.uniform(1.2, 2.6)),
        antenna_length=float(rng.uniform(0.15, 0.6)),
        antenna_club=bool(_pick((False, True), index, offsets[2])),
    )


def _insect_specimen(kind: InsectClass, rng: np.random.Generator, specimen: int) -> _InsectSpecimen:
    return _InsectSpecimen(
        kind=kind,
        color=_jitter(kind.color, rng, 0.1),
        length=kind.length * float(rng.uniform(0.9, 1.1)),
        leg_angles=tuple(float(a) for a in rng.uniform(-0.15, 0.15, 6)),
    )


def _segment_distance(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    dx, dy = end[0] - start[0], end[1] - start[1]
    t = np.clip(((x - start[0]) * dx + (y - start[1]) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(x - start[0] - t * dx, y - start[1] - t * dy)


def _render_insect(specimen: _InsectSpecimen, rng: np.random.Generator, size: int) -> np.ndarray:
    kind, length = specimen.kind, specimen.length
    shift = (float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15)))
    a, b, unit = _grid(size, rng.uniform(0.92, 1.08), rng.uniform(0, 2 * math.pi), shift)
    abdomen_len, abdomen_w = kind.abdomen[0] * length, kind.abdomen[1] * length
    thorax_len, thorax_w = kind.thorax[0] * length, kind.thorax[1] * length
    head_r = kind.head * length
    back = -(abdomen_len + thorax_len + 2 * head_r) / 2
    parts = [  # (centre along the body axis, half length, half width)
        (back + abdomen_len / 2, abdomen_len / 2, abdomen_w / 2),
        (back + abdomen_len + thorax_len / 2 * 0.9, thorax_len / 2, thorax_w / 2),
        (back + abdomen_len + thorax_len * 0.9 + head_r * 0.9, head_r, head_r),
    ]

    background = np.asarray(_jitter((0.88, 0.88, 0.86), rng, 0.04), dtype=np.float32)
    light = _light(rng)
    image = background * (1.0 + 0.04 * _value_noise(rng, size, 6))[..., None]
    appendage = _insect_appendages(specimen, parts, a, b)
    dark = np.asarray(specimen.color, dtype=np.float32) * 0.6
    image = _mix(image, dark, _coverage(appendage, unit))

    body = np.zeros(a.shape, dtype=np.float32)
    color = np.zeros(a.shape + (3,), dtype=np.float32)
    for index, (centre, half_len, half_w) in enumerate(parts):
        p, q = (a - centre) / half_len, b / half_w
        distance = np.hypot(p, q)
        cover = _coverage((distance - 1.0) * half_w, unit)
        height = np.sqrt(np.clip(1.0 - distance**2, 0.0, 1.0))
        diffuse, specular = _shaded(p, q, height * 1.5, light, 0.35)
        part = np.asarray(specimen.color, dtype=np.float32) * (0.35 + 0.8 * diffuse)[..., None]
        if index == 0:
            part = _mix(part, kind.pattern_color, _insect_pattern(kind, p, q, unit / half_w))
        part = part + specular[..., None]
        color = _mix(color, part, cover)
        body = np.maximum(body, cover)
    return _camera(_mix(image, color / np.maximum(body, 1e-6)[..., None], body), rng, (0.0, 0.12))


def _insect_appendages(
    specimen: _InsectSpecimen, parts: list[tuple[float, float, float]], a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Signed distance to six two-segment legs and two antennae (mirrored about the body axis)."""
    kind, length = specimen.kind, specimen.length
    thorax_centre, thorax_half, thorax_w = parts[1]
    head_centre, head_r, _ = parts[2]
    leg = kind.leg_length * length
    distance = np.full(a.shape, np.inf, dtype=np.float32)
    for pair, direction in enumerate((0.9, 0.0, -0.9)):
        base = (thorax_centre + (0.6 - 0.6 * pair) * thorax_half, thorax_w * 0.7)
        for side in (1.0, -1.0):
            angle = direction + specimen.leg_angles[pair * 2 + (side < 0)]
            knee = (base[0] + 0.45 * leg * math.sin(angle), base[1] + 0.45 * leg * math.cos(angle))
            bend = angle + (0.8 if pair == 0 else -0.6)
            foot = (knee[0] + 0.55 * leg * math.sin(bend), knee[1] + 0.55 * leg * math.cos(bend))
            for start, end in ((base, knee), (knee, foot)):
                start_s, end_s = (start[0], side * start[1]), (end[0], side * end[1])
                distance = np.minimum(distance, _segment_distance(a, b, start_s, end_s))
    distance = distance - kind.leg_width
    antenna = kind.antenna_length * length
    tip_distance = np.full(a.shape, np.inf, dtype=np.float32)
    for side in (1.0, -1.0):
        root = (head_centre + head_r * 0.7, side * head_r * 0.5)
        elbow = (root[0] + 0.5 * antenna, root[1] + side * 0.25 * antenna)
        tip = (elbow[0] + 0.5 * antenna * 0.9, elbow[1] + side * 0.45 * antenna)
        for start, end in ((root, elbow), (elbow, tip)):
            distance = np.minimum(distance, _segment_distance(a, b, start, end) - 0.9)
        tip_distance = np.minimum(tip_distance, np.hypot(a - tip[0], b - tip[1]))
    if kind.antenna_club:
        distance = np.minimum(distance, tip_distance - 3.5)
    return distance


def _insect_pattern(kind: InsectClass, p: np.ndarray, q: np.ndarray, soft: float) -> np.ndarray:
    """Pattern on the abdomen in its unit-ellipse coordinates ``p`` (along) and ``q`` (across)."""
    if kind.pattern == "stripes":
        return _smoothstep(0.55, 0.8, np.cos(math.pi * kind.segments * (p + 1) / 2) ** 2) * 0.8
    if kind.pattern == "spots":
        spots = np.full(p.shape, np.inf, dtype=np.float32)
        for along in (-0.5, 0.0, 0.5):
            for across in (-0.45, 0.45):
                spots = np.minimum(spots, np.hypot(p - along, q - across))
        return _coverage(spots - 0.18, soft)
    if kind.pattern == "elytra":
        return _coverage(np.abs(q) - 0.04, soft)
    return np.zeros_like(p)


_GENERATORS: dict[str, tuple[Callable, Callable, Callable]] = {
    "wood": (_wood_class, _wood_specimen, _render_wood),
    "weed_seed": (_seed_class, _seed_specimen, _render_seed),
    "insect": (_insect_class, _insect_specimen, _render_insect),
}
