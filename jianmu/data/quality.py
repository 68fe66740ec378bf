"""The photo-quality gate: is a photo good enough to judge?

Measured on the picture the model sees (the resized, centre-cropped 8-bit image that
:func:`jianmu.data.preprocess.preprocess` normalizes, so nothing is decoded twice) and on what the
file itself says (its stored size, its JPEG quality setting):

- ``sharpness``: log10 of the variance of the Laplacian of the grey image (+1): blur removes the
  fine texture a wood's pores, a seed's surface or a wing's veins are told by;
- ``level``: the mean grey level (0-1); ``contrast``: its standard deviation (0-1);
- ``white`` / ``black``: the grey level (0-1) that 99% / 1% of the pixels stay under, the
  brightest and darkest parts of the frame. A photo a stop under keeps its brightest parts at half
  their level, although its mean may be that of a darker subject well exposed (a halved pale wood
  looks as dark as an ebony on average, not at its brightest): ``white`` tells them apart
  (exposure x0.5 of the wood-swfu5 test photos: flagged 78% by the mean alone, all with it);
  ``black`` rises when even the darkest parts are washed out;
- ``shadows`` / ``highlights``: the share of pixels clipped to black (<= 8) / white (>= 247);
- ``scale``: the photo's shorter side in pixels as stored, its pixel scale against the training
  photos' (a photo at half their scale shows its structures at half their size);
- ``jpeg_quality``: the JPEG quality setting it was written with (NaN for other formats).

The bounds are fitted from the training photos' own measures (:func:`fit_quality`), so that a
model trained on one device's photos gets bounds for that device, and stored in the model's
metadata (``quality``); :class:`QualityGate` applies them and says why a photo fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from jianmu.config import QualityConfig
from jianmu.errors import JianmuError

MEASURES = (
    "sharpness", "level", "contrast", "white", "black", "shadows", "highlights", "scale",
    "jpeg_quality",
)  # fmt: skip
"""The columns of a measures array, in order."""

# Which side of each measure a bad photo lies on, and the reason it is given. A measure may have
# both sides (level: too dark or overexposed).
SIDES: dict[str, dict[str, str]] = {
    "sharpness": {"low": "blurred"},
    "level": {"low": "too dark", "high": "overexposed"},
    "contrast": {"low": "low contrast"},
    "white": {"low": "too dark"},
    "black": {"high": "overexposed"},
    "shadows": {"high": "too dark"},
    "highlights": {"high": "overexposed"},
    "scale": {"low": "too small"},
    "jpeg_quality": {"low": "heavily compressed"},
}
REASONS = ("blurred", "too dark", "overexposed", "low contrast", "too small", "heavily compressed")

# A clipped share is 0 on most good photos, so a quantile bound would refuse the first clipped
# pixel: a photo may always clip this much.
MIN_CLIPPED = 0.02
SHADOW, HIGHLIGHT = 8, 247
WHITE, BLACK = 0.99, 0.01  # the shares of pixels under the white and the black point


def measure(crop: np.ndarray, stored_side: int, jpeg_quality: int | None) -> np.ndarray:
    """The :data:`MEASURES` of an H x W x 3 uint8 picture (as the model sees it), float32."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    mean, std = cv2.meanStdDev(grey)
    pixels = grey.size
    cumulative = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel())
    black, white = np.searchsorted(cumulative, (BLACK * pixels, WHITE * pixels))
    shadows, highlights = cumulative[SHADOW], pixels - cumulative[HIGHLIGHT - 1]
    return np.array(
        [
            np.log10(float(laplacian.var()) + 1.0),
            float(mean[0, 0]) / 255.0,
            float(std[0, 0]) / 255.0,
            float(white) / 255.0,
            float(black) / 255.0,
            float(shadows) / pixels,
            float(highlights) / pixels,
            float(stored_side),
            np.nan if jpeg_quality is None else float(jpeg_quality),
        ],
        dtype=np.float32,
    )


def unmeasured() -> np.ndarray:
    """The measures of a photo that could not be read (all NaN: never judged)."""
    return np.full(len(MEASURES), np.nan, dtype=np.float32)


def fit_quality(measures: np.ndarray, config: QualityConfig) -> dict[str, Any]:
    """Bounds from the training photos' measures (N x len(MEASURES); NaN rows are skipped per
    measure): the ``config.quantile`` (low side) or ``1 - quantile`` (high side), moved outwards by
    ``config.margin`` times the 5-95% spread; ``scale`` and ``jpeg_quality`` (one value on most
    devices: no spread) at ``config.min_scale`` times their low quantile; clipped shares never
    under :data:`MIN_CLIPPED`. A measure no training photo has (``jpeg_quality`` on PNGs) gets no
    bound; with fewer than ``config.min_photos`` photos, no
    measure does (``note`` says so).

    Returns the ``quality`` metadata: ``{"bounds": {measure: {"low"|"high": value}}, "photos": N,
    "quantile", "margin", "min_scale", "measures": {measure: [q5, q50, q95]}}``.
    """
    measures = np.asarray(measures, dtype=np.float64)
    if measures.ndim != 2 or measures.shape[1] != len(MEASURES):
        raise JianmuError(f"quality measures must be N x {len(MEASURES)}, got {measures.shape}")
    fitted = {
        "photos": int(len(measures)),
        "quantile": config.quantile,
        "margin": config.margin,
        "min_scale": config.min_scale,
    }
    if len(measures) < config.min_photos:
        note = f"not fitted: {len(measures)} training photos, quality.min_photos is "
        note += str(config.min_photos)
        return {"bounds": {}, **fitted, "note": note}
    bounds: dict[str, dict[str, float]] = {}
    summary: dict[str, list[float]] = {}
    for column, name in enumerate(MEASURES):
        values = measures[:, column]
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        q5, q50, q95 = np.quantile(values, [0.05, 0.5, 0.95])
        summary[name] = [round(float(v), 6) for v in (q5, q50, q95)]
        slack = config.margin * (q95 - q5)
        sides = {}
        if "low" in SIDES[name]:
            low = float(np.quantile(values, config.quantile))
            relative = name in ("scale", "jpeg_quality")  # a device writes one size, one setting
            sides["low"] = low * config.min_scale if relative else low - slack
        if "high" in SIDES[name]:
            high = float(np.quantile(values, 1.0 - config.quantile)) + slack
            sides["high"] = max(high, MIN_CLIPPED) if name in ("shadows", "highlights") else high
        bounds[name] = {side: round(value, 6) for side, value in sides.items()}
    return {"bounds": bounds, **fitted, "measures": summary}


@dataclass(frozen=True)
class QualityGate:
    """The fitted bounds of a model (its ``quality`` metadata), applied to measured photos."""

    bounds: dict[str, dict[str, float]]

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> QualityGate | None:
        """The gate of a model's metadata, or None for a model trained before the gate."""
        quality = meta.get("quality")
        if not quality or not quality.get("bounds"):
            return None
        return cls({name: dict(sides) for name, sides in quality["bounds"].items()})

    def reasons(self, measures: np.ndarray) -> list[str]:
        """Why a photo with these measures should be taken again ([]: it passes), in the order of
        :data:`REASONS`; an unmeasured value (NaN) never fails."""
        found = set()
        for column, name in enumerate(MEASURES):
            value = float(measures[column])
            sides = self.bounds.get(name)
            if sides is None or not np.isfinite(value):
                continue
            if "low" in sides and value < sides["low"]:
                found.add(SIDES[name]["low"])
            if "high" in sides and value > sides["high"]:
                found.add(SIDES[name]["high"])
        return [reason for reason in REASONS if reason in found]

    def describe(self, measures: np.ndarray) -> dict[str, Any]:
        """The record of one photo: :meth:`reasons` and the measures."""
        return described(measures, self.reasons(measures))


def described(measures: np.ndarray, reasons: list[str]) -> dict[str, Any]:
    """A photo's ``quality`` record: why it fails (``reasons``; [] passes) and its measures,
    rounded (None: not measured)."""
    return {
        "reasons": reasons,
        "measures": {
            name: (round(float(value), 4) if np.isfinite(value) else None)
            for name, value in zip(MEASURES, measures, strict=True)
        },
    }
