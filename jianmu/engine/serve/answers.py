"""The JSON answers of ``jianmu serve``, as pydantic models (they make the OpenAPI page).

A photo's and a specimen's answer are the records ``jianmu predict`` writes, field for field
(:mod:`jianmu.engine.predict`): the models name the fields a client relies on and let every other
field of a record through unchanged (``extra="allow"``), so the two never drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Candidate(_Record):
    class_: str = Field(alias="class", description="the model's class")
    species: str | None = Field(description="its scientific name (None: outside the taxonomy)")
    probability: float = Field(description="calibrated probability (specimen: mean share)")


class PhotoAnswer(_Record):
    """One photo, as a row of ``jianmu predict``."""

    path: str = Field(description="the photo's name as sent (a label, never a path here)")
    specimen: str | None
    status: str = Field(description="ok, retake (quality gate), or why it could not be read")
    verdict: str | None
    rank: str | None = Field(description="species, genus, family or unknown")
    taxon: str | None
    top: list[Candidate]
    unknown_score: float | None
    species: str | None
    chinese_name: str | None
    genus: str | None
    family: str | None
    flags: list[str]
    possible_flags: list[str]
    quality: dict[str, Any] | None = Field(description="measures and the gate's reasons")


class SpecimenAnswer(_Record):
    """The specimen's roll-up, as ``jianmu predict`` writes it (with the declaration's decision
    when a ``declared`` taxon was sent, as ``jianmu verify``)."""

    specimen: str
    images: int
    ok_images: int
    retake_images: int
    verdict: str | None
    rank: str | None
    taxon: str | None
    top: list[Candidate]
    species: str | None
    chinese_name: str | None
    genus: str | None
    family: str | None
    flags: list[str]
    possible_flags: list[str]


class IdentifyAnswer(BaseModel):
    model: str = Field(description="the model's name on this server")
    specimen: SpecimenAnswer
    photos: list[PhotoAnswer] = Field(description="one answer per photo, in the order sent")
    summary: dict[str, Any] = Field(description="the summary of jianmu predict")
    record_sha256: str = Field(description="the inspection record's hash (jianmu record check)")
    record: dict[str, Any] = Field(description="the sealed inspection record itself")
    sheet: str | None = Field(
        default=None, description="with ?sheet=true: the inspection sheet as an HTML fragment"
    )


class ModelInfo(BaseModel):
    name: str
    format: str = Field(description="onnx, torchscript or checkpoint")
    sha256: str = Field(description="the bundle file's SHA-256, as the records carry it")
    classes: list[str]
    species: list[str | None]
    taxonomy: dict[str, Any] | None = Field(description="domain and version")
    input_size: int
    settings: dict[str, Any] = Field(
        description="rules and thresholds in force: top_k, views, unknown rule, species and rank "
        "thresholds, quality gate"
    )
    extended: dict[str, Any] | None = Field(description="species added after training, if any")


class ModelsAnswer(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
