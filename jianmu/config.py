"""Typed configuration: pydantic models, YAML loading and ``--set`` overrides.

One precedence, written once in :func:`load_config`: defaults < YAML file < ``--set a.b=value`` <
named options. This module imports neither torch nor the rest of jianmu (except the error type),
so the CLI can validate a config before any heavy import.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jianmu.errors import JianmuError, did_you_mean

Domain = Literal["wood", "weed_seed", "insect"]
DOMAINS: tuple[str, ...] = get_args(Domain)
# The unknown-species rules (jianmu.calibration.apply scores them). Relative Mahalanobis distance on
# the embedding won the leave-species-out comparison on wood-swfu5 (datasets/wood-swfu5.md).
UnknownRule = Literal["msp", "energy", "mahalanobis", "relative_mahalanobis", "knn"]
UNKNOWN_RULES: tuple[str, ...] = get_args(UnknownRule)
Split = Literal["train", "val", "test"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# Keys of earlier versions: old name -> new name (None: gone), said in one line with the new home.
MOVED_KEYS: dict[str, tuple[str | None, str]] = {
    "eval.unknown_score": ("calibration.rule", "calibration settings live under calibration:"),
    "eval.target_known_recall": (
        "calibration.target_known_recall",
        "calibration settings live under calibration:",
    ),
    "eval.calibrate": (None, "every training run is calibrated; see calibration:"),
    "eval.specimen_aggregation": (
        None,
        "eval rolls specimens up with the one rule predict uses (README, 'Specimens')",
    ),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images are and how they are audited and split."""

    root: Path | None = None
    manifest: Path | None = None
    domain: Domain = "wood"
    taxonomy: Path | None = Field(
        default=None, description="taxonomy YAML; default: configs/taxonomy/<domain>.yaml"
    )
    extensions: list[str] = list(IMAGE_EXTENSIONS)
    specimen_pattern: str | None = Field(
        default=None,
        description="regex on the file name (without extension) whose group 'specimen' (or "
        "group 1) names the specimen; default: the sub-folder under the class folder, else the "
        "file itself",
    )
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    near_duplicate_distance: int = Field(
        default=4,
        ge=0,
        le=64,
        description="max perceptual-hash Hamming distance of near-duplicates",
    )
    min_images_per_class: int = Field(default=10, ge=1)
    min_image_side: int = Field(
        default=64,
        ge=1,
        description="images whose shorter side is smaller are 'very small' in the audit; predict "
        "refuses to guess on them ('too small'), capped at the model's input size",
    )
    families: dict[str, str] = Field(
        default={},
        description="genus -> family, for class folders outside the domain's taxonomy (the "
        "genus comes from a binomial folder name: Genus_species)",
    )
    read_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds one file may take to read (a stalled network share); then its row "
        "says 'read timed out' and the run goes on",
    )
    workers: int = Field(default=2, ge=0)
    cache_images: bool = Field(
        default=False,
        description="keep decoded (reduced) images in memory after the first epoch: for data "
        "sets that fit in RAM, it removes JPEG decoding from every later epoch",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")
        return self


class AugmentConfig(_Strict):
    """Training augmentation in three stages: geometry -> appearance -> normalize."""

    preset: str | None = Field(
        default=None, description="name of configs/augment/<preset>.yaml filling unset fields"
    )
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    rotate_limit: float = Field(default=0.0, ge=0.0, le=180.0)
    appearance: list[dict[str, dict[str, Any]]] | None = Field(
        default=None, description="albumentations transforms as [{Name: {kwarg: value}}]"
    )


class ModelConfig(_Strict):
    name: str = "resnet18"
    pretrained: bool = Field(default=False, description="download weights from the hub (online)")
    pretrained_path: Path | None = None
    img_size: int = Field(default=224, ge=16, le=2048)
    crop_pct: float = Field(default=1.0, gt=0.0, le=1.0)
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0)


# What a training run can also log to (jianmu.engine.tracking), besides its run folder.
TrainLogger = Literal["tensorboard", "mlflow"]


class TrainConfig(_Strict):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: str = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.05, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: int = Field(default=2, ge=0)
    min_lr: float = Field(default=1e-6, ge=0.0)
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    mixup: float = Field(default=0.0, ge=0.0)
    cutmix: float = Field(default=0.0, ge=0.0)
    ema: bool = False
    ema_decay: float = Field(default=0.999, gt=0.0, lt=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0)
    imbalance: Literal["none", "sampler", "loss"] = "none"
    early_stopping_patience: int | None = Field(default=None, ge=1)
    monitor: Literal["val_top1", "val_loss", "val_macro_f1"] = "val_top1"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    workers: int = Field(default=2, ge=0)
    deterministic: bool = False
    quiet: bool = False
    loggers: list[TrainLogger] = Field(
        default=[],
        description="also log the run to TensorBoard (<run>/tensorboard/) and/or MLflow (the "
        "resolved config as params, metrics per epoch, the run folder's files except the "
        "weights); needs pip install 'jianmu[tracking]'",
    )
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (sqlite:///..., http://...); default: "
        "sqlite:///<the folder holding the run folder>/mlflow.db, shared by the runs there",
    )
    mlflow_experiment: str | None = Field(
        default=None, description="MLflow experiment; default: jianmu-<data.domain>"
    )


class CalibrationConfig(_Strict):
    """What steers the calibration that follows training (and the int8 export's refit)."""

    rule: UnknownRule = Field(
        default="relative_mahalanobis", description="the unknown-species rule predictions use"
    )
    target_known_recall: float = Field(
        default=0.95, gt=0.0, le=1.0, description="share of known validation images kept"
    )
    tta: bool = Field(
        default=False,
        description="also fit for test-time augmentation: the flips/quarter turns training "
        "used (8 views with augment.rotate90, 4 with both flips); eval then uses them unless "
        "eval.tta says otherwise",
    )
    max_wrong_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="answers at the species, genus or family rank are fitted so that at most this "
        "share of validation images is answered wrong (1: no rank answers, species or unknown)",
    )
    open_set: Path | None = Field(
        default=None,
        description="rank thresholds fitted on species never seen: the folder of a `jianmu eval "
        "--open-set` run of the same recipe (or its rank-thresholds.json), carried over in units "
        "of this model's validation scores; unset: fitted on the model's own classes left out "
        "in turn",
    )
    batch_size: int = Field(default=64, ge=1)


class QualityConfig(_Strict):
    """The photo-quality gate: thresholds fitted at training time from the training photos' own
    measures (a model trained on one device's photos gets that device's thresholds), applied by
    predict and verify. Each bound is the training photos' ``quantile`` (or ``1 - quantile``) on
    its side, moved outwards by ``margin`` times the spread between the 5% and 95% quantiles."""

    gate: bool = Field(default=True, description="predict/verify: photos that fail get 'retake'")
    quantile: float = Field(
        default=0.005, ge=0.0, le=0.5, description="training photos' share outside each bound"
    )
    margin: float = Field(
        default=0.25, ge=0.0, description="bounds moved outwards by this share of the 5-95% spread"
    )
    min_scale: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="'too small' / 'heavily compressed': the shorter side / the JPEG quality "
        "setting under this share of the training photos' low quantile",
    )
    min_photos: int = Field(
        default=30,
        ge=1,
        description="fewer training photos than this: no bounds are fitted (the quantiles of a "
        "handful of photos would send good photos back)",
    )


class EvalConfig(_Strict):
    batch_size: int = Field(default=64, ge=1)
    tta: bool | None = Field(
        default=None,
        description="the model's test-time views (its training's flips/quarter turns); default: "
        "as the model was calibrated",
    )
    split: Split = Field(default="test", description="the manifest split evaluated")


class PredictConfig(_Strict):
    """What ``jianmu predict`` does with field photos (``--set predict.top_k=5``)."""

    top_k: int = Field(default=3, ge=1, description="species per image; the rest is 'other'")
    tta: bool = Field(
        default=False,
        description="average the flips/quarter turns the model trained with (up to 8 views: as "
        "many times slower)",
    )
    batch_size: int | None = Field(default=None, ge=1, description="default: the model form's")
    workers: int | None = Field(default=None, ge=1, description="decoding threads; default: CPUs")
    specimen_pattern: str | None = Field(
        default=None,
        description="regex on file names whose group 'specimen' (or group 1) names the "
        "specimen; default: the sub-folder under the INPUT folder",
    )
    html: Path | None = Field(default=None, description="also write a self-contained HTML page")
    resume: bool = Field(default=False, description="skip the files already in out; append")
    record: Path | None = Field(
        default=None,
        description="inspection record; default: <out stem>.record.json beside out (or html)",
    )
    operator: str | None = Field(default=None, description="who ran it, for the record")
    device: str | None = Field(default=None, description="the capture device, for the record")


class ExportConfig(_Strict):
    format: Literal["onnx", "torchscript"] = "onnx"
    opset: int = Field(default=17, ge=17)
    int8: bool = False
    min_top1_agreement: float = Field(default=0.995, ge=0.0, le=1.0)
    int8_max_top1_drop: float = Field(default=1.0, ge=0.0, description="percentage points")
    calibration_images: int = Field(default=512, ge=1, description="int8: training images")
    parity_images: int = Field(default=1000, ge=1, description="validation images compared")
    max_logit_difference: float = Field(
        default=1e-3, gt=0, description="fp32: on random tensors, relative to the logit range"
    )
    gallery: int = Field(
        default=0,
        ge=0,
        le=20,
        description="reference photos per class carried in the bundle as small JPEGs (0: none; "
        "mind the data set's licence)",
    )
    gallery_licence: str | None = Field(
        default=None, description="the reference photos' licence note, stored with them"
    )


class VerifyConfig(_Strict):
    """What ``jianmu verify`` checks the photos against: one declared name, or a CSV."""

    declared: str | None = Field(
        default=None, description="one declared taxon for every input: species, genus (sp.), family"
    )
    declarations: Path | None = Field(
        default=None,
        description="CSV with the columns 'declared' and 'specimen' or 'path' (relative to it)",
    )


class BenchConfig(_Strict):
    update_baseline: bool = Field(default=False, description="rewrite the suite's baseline")


class CompareTolerances(_Strict):
    """How far each figure of NEW may move from OLD's in ``jianmu compare`` (the rules of a bench
    suite's tolerances: max_drop, max_rise, min_ratio, max_ratio, min_value, max_value). Shares
    are fractions (0.01 = 1 point). A figure's rules are replaced as a whole
    (``--set compare.tolerances.top1.max_drop=0.02``); ``null`` reports it without judging it."""

    top1: dict[str, Any] | None = Field(
        default={"max_drop": 0.01}, description="overall top-1 may drop by 1 point"
    )
    macro_f1: dict[str, Any] | None = Field(
        default={"max_drop": 0.01}, description="macro-F1 may drop by 0.01"
    )
    class_recall: dict[str, Any] | None = Field(
        default={"max_drop": 0.05},
        description="each class's recall (top-1 on its images) may drop by 5 points",
    )
    specimen_top1: dict[str, Any] | None = Field(
        default={"max_drop": 0.02}, description="specimen-level top-1 may drop by 2 points"
    )
    ece: dict[str, Any] | None = Field(
        default={"max_rise": 0.02}, description="calibrated ECE may rise by 0.02"
    )
    unknown_rejection: dict[str, Any] | None = Field(
        default={"max_drop": 0.03},
        description="share of unknown-species images not answered wrong (unknown, or a right "
        "genus/family) may drop by 3 points",
    )
    known_flagged_unknown: dict[str, Any] | None = Field(
        default=None, description="share of known images the unknown rule flags (not judged)"
    )
    ranks_species: dict[str, Any] | None = Field(
        default=None, description="share answered at species rank (not judged)"
    )
    ranks_genus: dict[str, Any] | None = Field(
        default=None, description="share answered at genus rank (not judged)"
    )
    ranks_family: dict[str, Any] | None = Field(
        default=None, description="share answered at family rank (not judged)"
    )
    ranks_unknown: dict[str, Any] | None = Field(
        default=None, description="share answered 'unknown - refer to lab' (not judged)"
    )
    ranks_wrong: dict[str, Any] | None = Field(
        default={"max_rise": 0.01}, description="share answered wrong at any rank may rise 1 point"
    )
    ranks_deepest_right: dict[str, Any] | None = Field(
        default={"max_drop": 0.03},
        description="share given the deepest right answer the classes allow may drop 3 points",
    )
    images_per_s: dict[str, Any] | None = Field(
        default={"min_ratio": 0.8}, description="speed may fall to 0.8 of OLD's"
    )


class CompareConfig(_Strict):
    """``jianmu compare OLD NEW``: the release gate's tolerances and speed measurement."""

    tolerances: CompareTolerances = CompareTolerances()
    count_floor: int = Field(
        default=1,
        ge=0,
        description="a share measured on n images (specimens) may always move by this many of "
        "them: max_drop/max_rise become at least count_floor / n, so one image more or less on a "
        "small class or test set is not a regression (0: off)",
    )
    speed_seconds: float = Field(
        default=2.0, gt=0, description="images/s: time each model is run for, at least"
    )
    speed_rounds: int = Field(
        default=3,
        ge=1,
        description="images/s: runs of each model, at least; runs alternate OLD and NEW and each "
        "model's fastest counts (a busy machine only slows runs down)",
    )
    speed_images: int = Field(
        default=64, ge=1, description="images/s: evaluated images per run (repeated when fewer)"
    )


# Why `jianmu review` sends a photo to the expert (jianmu.engine.review says each in words).
ReviewReason = Literal["unknown", "above_species", "low_margin", "declaration"]
REVIEW_REASONS: tuple[str, ...] = get_args(ReviewReason)


class ReviewConfig(_Strict):
    """What ``jianmu review`` puts before the lab's expert, and what ``jianmu data import``
    refuses. A specimen goes to review when one of its readable photos (or the specimen's own
    roll-up) has a reason in ``reasons``."""

    reasons: list[ReviewReason] = Field(
        default=list(REVIEW_REASONS),
        description="unknown: 'unknown - refer to lab'; above_species: answered at the genus or "
        "family only; low_margin: top-1 leads top-2 by less than max_margin; declaration: "
        "inconsistent with, or cannot decide, the declared name (verify)",
    )
    max_margin: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="low_margin: top-1 minus top-2 calibrated probability below this (0: off)",
    )
    refuse_near_duplicates: bool = Field(
        default=True,
        description="data import: refuse a photo within data.near_duplicate_distance (perceptual "
        "hash) of one in the data set, as well as exact copies",
    )


class ServeConfig(_Strict):
    """``jianmu serve``: the HTTP service of the capture terminals (``--set serve.max_photos=10``).
    Photos are judged with the ``predict:`` settings (top_k, tta, workers) and ``quality.gate``."""

    host: str = Field(default="127.0.0.1", description="address to listen on (loopback: this host)")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free one)")
    token_file: Path | None = Field(
        default=None,
        description="file holding the bearer token every endpoint but /healthz then requires",
    )
    insecure: bool = Field(
        default=False, description="allow a non-loopback host without a token (a warning)"
    )
    workers: int = Field(default=1, ge=1, description="server processes, each with the models")
    max_photo_bytes: int = Field(default=40_000_000, ge=1, description="per photo (40 MB); 413")
    max_photos: int = Field(default=20, ge=1, description="photos per request; 413 beyond")
    max_request_bytes: int = Field(
        default=200_000_000, ge=1, description="whole request body (200 MB); 413 beyond"
    )
    request_timeout: float = Field(
        default=60.0, gt=0, description="seconds a request body may take to arrive; 408 after"
    )
    idle_timeout: float = Field(
        default=10.0, gt=0, description="seconds a request body may pause between chunks; 408"
    )
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        description="how long the model waits for the photos of requests still decoding, to run "
        "them in one batch",
    )
    max_batch: int = Field(default=32, ge=1, description="photos per model run, at most")
    max_connections: int = Field(
        default=64, ge=1, description="connections at once; 503 beyond (bounds memory)"
    )
    ssl_certfile: Path | None = Field(default=None, description="TLS certificate (uvicorn)")
    ssl_keyfile: Path | None = Field(default=None, description="TLS private key (uvicorn)")


class Config(_Strict):
    """Everything a command needs. ``train.epochs`` in YAML is ``--set train.epochs=`` here too.

    ``out`` is where the command writes: the run folder (train), the report folder (eval), the
    bundle file (export), the results file (predict), the figures folder (bench).
    """

    seed: int = 42
    out: Path | None = None
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    quality: QualityConfig = QualityConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    predict: PredictConfig = PredictConfig()
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()
    compare: CompareConfig = CompareConfig()
    review: ReviewConfig = ReviewConfig()
    serve: ServeConfig = ServeConfig()

    def updated(self, overrides: list[str] | tuple[str, ...] = (), **options: Any) -> Config:
        """A copy with ``overrides`` (``a.b=v``) and ``options`` (``a__b=v``) applied, validated."""
        return load_config(None, overrides, base=self.model_dump(mode="json"), **options)


class BenchData(_Strict):
    """One data set of a bench suite: a real folder, or a synthetic set generated on the spot."""

    name: str = Field(description="prefix of this data set's figures, e.g. 'wood145'")
    root: Path | None = Field(default=None, description="real images; relative to the repo")
    synthetic: Domain | None = Field(default=None, description="generate a set of this domain")
    classes: int = Field(default=5, ge=2)
    per_class: int = Field(default=6, ge=3)
    size: int = Field(default=96, ge=32)
    recipe: Path = Field(description="training config, relative to the suite file")
    set: list[str] = Field(default=[], description="overrides of the recipe (the budget)")
    protocol: Literal["pipeline", "leave_species_out"] = Field(
        default="pipeline",
        description="pipeline: train, eval, export, predict; leave_species_out: the open-set "
        "experiment (one training run per held-out species)",
    )
    hold_out: list[str] | None = Field(
        default=None, description="leave_species_out: the class folders held out (default all)"
    )
    compare_with: Path | None = Field(
        default=None,
        description="a model (committed or local; relative to the repo) the one trained here must "
        "not regress against: jianmu compare on the test split, regressions in the verdict; a "
        "missing file is noted and skipped",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BenchData:
        if (self.root is None) == (self.synthetic is None):
            raise ValueError("give either root (real images) or synthetic (a domain)")
        return self


class BenchSpeed(_Strict):
    batch_size: int = Field(default=32, ge=1)
    seconds: float = Field(default=5.0, gt=0, description="timed per model-only backend")
    large_jpeg: tuple[int, int] = Field(default=(4000, 3000), description="width, height")
    predict_repeats: int = Field(
        default=1, ge=1, description="predict over the test images this many times (speed)"
    )


class BenchSuite(_Strict):
    """A ``configs/bench/*.yaml`` suite: data sets, training budget, figures and tolerances."""

    name: str
    description: str = ""
    data: list[BenchData] = Field(min_length=1)
    int8: bool = True
    speed: BenchSpeed | None = BenchSpeed()
    baseline: Path = Field(description="committed baseline JSON, relative to the repo")
    tolerances: dict[str, dict[str, Any]] = {}
    seed: int = 42


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false): `amp: off` stays the string off."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with YAML 1.2 booleans (see :class:`_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def find_configs_dir() -> Path:
    """The shipped ``configs/`` folder: $JIANMU_CONFIGS, source checkout or installed copy."""
    candidates = [
        Path(os.environ["JIANMU_CONFIGS"]) if os.environ.get("JIANMU_CONFIGS") else None,
        Path(__file__).resolve().parent.parent / "configs",
        Path(sys.prefix) / "share" / "jianmu" / "configs",
    ]
    for candidate in candidates:
        if candidate is not None and (candidate / "taxonomy").is_dir():
            return candidate
    raise JianmuError("cannot find the jianmu configs folder; set JIANMU_CONFIGS to its path")


def read_yaml(path: str | Path) -> Any:
    """Read one YAML file, turning any failure into a one-line JianmuError."""
    path = Path(path)
    if not path.is_file():
        raise JianmuError(f"config file not found: {path}")
    try:
        return load_yaml_text(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise JianmuError(f"cannot read YAML {path}: {first_line}") from None


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "model.name=resnet50"]`` into a nested dict (values via YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise JianmuError(f"--set expects section.key=value, got {item!r}")
        try:
            value = load_yaml_text(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise JianmuError(f"--set {key}: cannot parse value {raw!r}") from None
        _set_dotted(nested, key, value)
    return nested


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        existing = target.get(part)
        if not isinstance(existing, dict):
            existing = target[part] = {}
        target = existing
    target[leaf] = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``update`` win; nested dicts are merged, not replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
    **options: Any,
) -> Config:
    """Build a Config: defaults < ``base`` < YAML ``path`` < ``overrides`` (a.b=v) < ``options``.

    ``base`` is a config dict to start from, e.g. the one stored in a checkpoint.

    ``options`` are named CLI options as dotted keys with ``__`` for dots (``data__root=...``) or a
    plain dict under ``values``; ``None`` values mean "not given" and are ignored.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise JianmuError(f"{path}: expected a mapping of sections at the top level")
        raw = loaded
    raw = merge(base or {}, raw)
    raw = merge(raw, parse_overrides(list(overrides)))
    named: dict[str, Any] = {}
    for key, value in options.items():
        if value is not None:
            _set_dotted(named, key.replace("__", "."), value)
    raw = merge(raw, named)
    raw = _apply_augment_preset(raw)
    return validate_config(raw, source=str(path) if path else "config")


def _apply_augment_preset(raw: dict[str, Any]) -> dict[str, Any]:
    augment = raw.get("augment")
    if not isinstance(augment, dict) or not augment.get("preset"):
        return raw
    name = str(augment["preset"])
    preset_path = find_configs_dir() / "augment" / f"{name}.yaml"
    if not preset_path.is_file():
        known = sorted(p.stem for p in preset_path.parent.glob("*.yaml"))
        raise JianmuError(f"augment.preset: unknown preset {name!r}{_hint(name, known)}")
    preset = read_yaml(preset_path) or {}
    preset.pop("preset", None)
    return {**raw, "augment": merge(preset, augment)}


def validate_config(raw: dict[str, Any], source: str = "config", model: type[BaseModel] = Config):
    """Validate a raw dict into ``model``; the first problem becomes one JianmuError line."""
    if model is Config:
        _refuse_moved_keys(raw, source)
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise JianmuError(f"{source}: {describe_validation_error(error, model)}") from None


def _refuse_moved_keys(raw: dict[str, Any], source: str) -> None:
    """An old config's moved or removed key, in one line that names its new home."""
    for old, (new, why) in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            where = f"use '{new}' ({why})" if new else f"remove it: {why}"
            raise JianmuError(f"{source}: '{old}' is no longer a setting; {where}")


def describe_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first pydantic error, with a 'did you mean' hint for unknown keys."""
    # An unknown key usually explains a "missing" sibling (a typo), so report it first.
    first = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    location = [str(part) for part in first["loc"]]
    key = ".".join(location) or "(top level)"
    count = error.error_count()
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    if first["type"] == "extra_forbidden":
        known = _field_names(model, location[:-1])
        return f"unknown key '{key}'{_hint(location[-1], known)}{more}"
    message = first["msg"]
    if "input" in first and first["type"] not in ("missing",):
        message = f"{message} (got {first['input']!r})"
    return f"{key}: {message}{more}"


def _field_names(model: type[BaseModel], location: list[str]) -> list[str]:
    """Field names of the model found at ``location`` (list indices step into item types)."""
    current: Any = model
    for part in location:
        if part.isdigit():
            current = _item_model(current)
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _item_model(field.annotation) or field.annotation
    return list(getattr(current, "model_fields", {}))


def _item_model(annotation: Any) -> Any:
    """The BaseModel inside ``list[M]``, ``M | None`` and the like, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _item_model(arg)
        if found is not None:
            return found
    return None


def _hint(name: str, known: list[str]) -> str:
    return did_you_mean(name, known, cutoff=0.5, list_known=True)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (paths as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
