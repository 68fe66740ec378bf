"""Preprocessing a model expects (size, mean, std, interpolation, crop), stored in checkpoints and
bundles. Pure Python: an ONNX bundle can be used without importing torch or albumentations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from jianmu.errors import JianmuError

INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic", "area", "lanczos")


@dataclass(frozen=True)
class TransformSpec:
    """Preprocessing a model expects; checkpoints and bundles store it to rebuild the transform."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformSpec:
        try:
            return cls(
                input_size=int(data["input_size"]),
                mean=as_triple(data["mean"], "mean"),
                std=as_triple(data["std"], "std"),
                interpolation=str(data.get("interpolation", "bicubic")),
                crop_pct=float(data.get("crop_pct", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise JianmuError(f"bad preprocessing record {data!r}: {error}") from None


def as_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise JianmuError(f"{name} needs 3 values (R, G, B), got {list(values)!r}")
    return triple  # type: ignore[return-value]


def resolve_transform_spec(
    data_config: dict[str, Any], img_size: int | None = None, crop_pct: float | None = None
) -> TransformSpec:
    """A TransformSpec from ``timm.data.resolve_model_data_config(model)``'s dict.

    ``img_size`` and ``crop_pct`` (from ModelConfig) win over the model's defaults when given.
    """
    input_size = data_config.get("input_size", (3, 224, 224))
    size = img_size if img_size is not None else int(input_size[-1])
    interpolation = str(data_config.get("interpolation", "bicubic"))
    if interpolation not in INTERPOLATION_NAMES:
        interpolation = "bicubic"  # timm's "random" and PIL-only modes have no cv2 equivalent
    return TransformSpec(
        input_size=int(size),
        mean=as_triple(data_config.get("mean", (0.485, 0.456, 0.406)), "mean"),
        std=as_triple(data_config.get("std", (0.229, 0.224, 0.225)), "std"),
        interpolation=interpolation,
        crop_pct=float(crop_pct if crop_pct is not None else data_config.get("crop_pct", 1.0)),
    )
