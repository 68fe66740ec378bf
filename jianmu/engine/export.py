"""``jianmu export``: a self-contained, verified bundle (ONNX, optionally int8, or TorchScript).

Every export is checked before it is kept (:mod:`jianmu.engine.parity`): the bundle, run through
the one runner with its own preprocessing, against the PyTorch model on a deliberately
independent reference path. Too little top-1 agreement (fp32), too large a logit difference on
random tensors (fp32) or too large an accuracy drop (int8) fails the export and leaves no bundle
behind; the figures are printed and stored in the bundle. An int8 bundle is calibrated again on
its own outputs with the very function training calibrates with
(:func:`jianmu.calibration.fit.calibrate`), for the settings the model was calibrated with.

The ONNX graph is written by PyTorch's TorchScript-based exporter (``dynamo=False``), chosen
explicitly: it needs no ``onnxscript`` and handles timm's convolutional networks; the tests run
this path. int8 is static QDQ quantization calibrated on training images (onnxruntime's tools);
dynamic int8 is much slower than fp32 for convolutional networks.

With ``export.gallery`` > 0 the bundle also carries reference photos (:mod:`jianmu.gallery`): that
many diverse training photos per class, embedded by the exported model itself (the embeddings
predict compares queries with), as small JPEGs with the data set's licence note.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import jianmu
from jianmu.bundle import (
    BUNDLE_FORMAT,
    INPUT_NAME,
    OUTPUT_NAMES,
    TORCHSCRIPT_GALLERY,
    TORCHSCRIPT_META,
    TORCHSCRIPT_STATISTICS,
    ModelBundle,
    OnnxBundle,
    TorchBundle,
    encode_statistics,
    set_onnx_metadata,
    taxonomy_entries,
)
from jianmu.calibration.extend import network_outputs
from jianmu.calibration.fit import calibrate, seeded_subset, settings_of
from jianmu.calibration.scores import FeatureStatistics
from jianmu.config import IMAGE_EXTENSIONS, Config, ExportConfig
from jianmu.data.images import load_image
from jianmu.data.samples import class_index, find_samples, relative_posix
from jianmu.data.split import manifest_items, read_manifest
from jianmu.data.stream import stream_batches
from jianmu.engine.parity import ExportCheckError, check_parity, measure_parity, reference_logits
from jianmu.errors import JianmuError
from jianmu.files import atomic_write
from jianmu.gallery import NO_LICENCE, THUMBNAIL_PX, Gallery, make_thumbnail, select_gallery
from jianmu.models import Checkpoint, OutputsModule, load_checkpoint
from jianmu.rundir import RunDir, default_bundle_path, run_folder

__all__ = ["ExportCheckError", "ExportResult", "export"]

# Training photos per class embedded to choose the reference gallery from, drawn with the seed:
# plenty for a diverse pick of up to 20, and a bound on the export's time (145 classes: at most
# 14,500 photos, about 2 minutes on two cores).
GALLERY_CANDIDATES = 100


@dataclass
class ExportResult:
    path: Path
    format: str
    int8: bool
    parity: dict[str, Any]
    seconds: float
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)
    gallery_bytes: int = 0
    """What the reference gallery adds to the bundle file (0: no gallery)."""
    warnings: list[str] = field(default_factory=list)


def export(config: Config, model: str | Path) -> ExportResult:
    """Export a run folder or checkpoint to a verified bundle at ``out`` (default: beside it),
    as ``export.format`` (``onnx``, ``torchscript``) and ``export.int8`` say, with
    ``export.gallery`` reference photos per class. The validation (and training) images come from
    ``data.root``/``data.manifest``, by default the run's own.

    Raises:
        ExportCheckError: the parity check failed (no bundle is written).
        JianmuError: bad settings, no validation images to check the export with, or no
            training photos for the gallery.
    """
    settings = config.export
    if settings.int8 and settings.format != "onnx":
        raise JianmuError("--int8 needs --format onnx (static quantization through onnxruntime)")
    started = time.perf_counter()
    model = Path(model)
    checkpoint = load_checkpoint(model)
    if settings.int8 and checkpoint.meta.get("extension"):
        raise JianmuError(
            f"{model}: species were added to this checkpoint after training; int8 calibration "
            f"needs training photos of every class: export the base model with --int8 and add "
            f"the species to that bundle (jianmu add-species model.int8.onnx ...)"
        )
    out = Path(config.out or default_bundle_path(model, settings.format, settings.int8))
    root = _data_root(checkpoint, config.data.root)
    items = _items(model, checkpoint, root, config.data.manifest)
    if not items["val"]:
        raise JianmuError(
            f"{model}: no validation images to check the export against; pass --data ROOT "
            f"(and --manifest CSV) pointing at the training data"
        )
    val = seeded_subset(items["val"], settings.parity_images)
    module = OutputsModule(checkpoint.build_model()).eval()
    reference = reference_logits(module, checkpoint.preprocessing, val)
    meta = _bundle_meta(checkpoint, model, settings)
    statistics = _statistics(meta, checkpoint)
    if settings.format == "onnx":
        fp32 = _onnx_bytes(module, checkpoint, settings.opset)
        proto = _onnx_proto(
            _quantize(fp32, items["train"], checkpoint, settings) if settings.int8 else fp32
        )
        set_onnx_metadata(proto, meta, statistics)
        bundle: ModelBundle = OnnxBundle(out, model=proto.SerializeToString())
    else:
        traced = _trace(module, checkpoint)
        bundle = TorchBundle(out, traced, meta, statistics, "torchscript")
    parity = measure_parity(bundle, module, reference, val)
    check_parity(parity, settings)
    meta["export"]["parity"] = parity
    if settings.int8 and "unknown" in meta:
        # int8 moves the outputs a little: calibrate again, for the same promise.
        hierarchy = bundle.calibrator.ranks.hierarchy
        transferred = (meta.get("ranks") or {}).get("transferred")
        fitted = calibrate(
            bundle.run,
            items,
            settings_of(meta),
            config.seed,
            hierarchy,
            transferred,
            tta_views=bundle.tta_views,
        )
        meta |= fitted.record
        meta["unknown"]["refit_for_int8"] = True
        statistics = fitted.statistics.to_arrays(keep_knn=meta["unknown"]["rule"] == "knn")
    gallery = _gallery(bundle, items["train"], root, config) if settings.gallery else None
    blob = gallery.to_blob() if gallery is not None else b""
    if gallery is not None:
        meta["gallery"] = {**gallery.describe(), "bytes": len(blob)}
    if settings.format == "onnx":
        set_onnx_metadata(proto, meta, statistics, blob)  # now with the parity figures
        atomic_write(out, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    else:
        extra = {
            TORCHSCRIPT_META: json.dumps(meta, ensure_ascii=False, default=str),
            TORCHSCRIPT_STATISTICS: encode_statistics(statistics),
        } | ({TORCHSCRIPT_GALLERY: blob} if blob else {})
        atomic_write(out, lambda tmp: _save_torchscript(traced, tmp, extra))
    return ExportResult(
        out, settings.format, settings.int8, parity, time.perf_counter() - started,
        out.stat().st_size, meta, _stored_size(blob, meta, settings.format), _warnings(settings),
    )  # fmt: skip


def _statistics(meta: dict[str, Any], checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's feature statistics a bundle keeps (the kNN bank only for ``knn``)."""
    arrays = {name: tensor.numpy() for name, tensor in checkpoint.extras.items()}
    statistics = FeatureStatistics.from_arrays(arrays)
    if statistics is None:
        return {}
    return statistics.to_arrays(keep_knn=(meta.get("unknown") or {}).get("rule") == "knn")


def _data_root(checkpoint: Checkpoint, data) -> Path | None:
    """``data.root`` when given, else the root the model was trained on."""
    return Path(data) if data is not None else _config_root(checkpoint)


def _items(model: Path, checkpoint: Checkpoint, root: Path | None, manifest) -> dict[str, list]:
    """Validation (parity), training (int8 quantization, calibration, gallery) items."""
    manifest = Path(manifest) if manifest is not None else RunDir(run_folder(model)).manifest
    if root is None or not root.is_dir():
        return {"val": [], "train": []}
    if manifest.is_file():
        return manifest_items(read_manifest(manifest, root=root), root, checkpoint.classes)
    # No manifest: every image of the model's classes under ``root`` serves both purposes.
    index = class_index(checkpoint.classes)
    samples = find_samples(root, IMAGE_EXTENSIONS)
    found = [(s.path, index[s.label]) for s in samples if s.label in index]
    return {"val": found, "train": found}


def _config_root(checkpoint: Checkpoint) -> Path | None:
    root = ((checkpoint.meta.get("config") or {}).get("data") or {}).get("root")
    return Path(root) if root else None


def _bundle_meta(checkpoint: Checkpoint, source, config: ExportConfig) -> dict[str, Any]:
    import onnxruntime
    import timm

    meta = dict(checkpoint.meta)
    if (meta.get("taxonomy") or {}).get("domain"):
        meta["taxonomy_entries"] = taxonomy_entries(meta)
    test_metrics = _test_metrics(Path(source))
    if test_metrics is not None:
        meta["test_metrics"] = test_metrics
    meta["format"] = BUNDLE_FORMAT
    meta["export"] = {
        "format": config.format,
        "int8": config.int8,
        "opset": config.opset if config.format == "onnx" else None,
        "num_outputs": network_outputs(checkpoint.meta),
        "source": str(source),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "jianmu_version": jianmu.__version__,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    return meta


def _test_metrics(source: Path) -> dict[str, Any] | None:
    path = RunDir(run_folder(source)).test_metrics
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _onnx_bytes(module, checkpoint: Checkpoint, opset: int) -> bytes:
    size = checkpoint.preprocessing.input_size
    dummy = torch.randn(2, 3, size, size)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with tempfile.TemporaryDirectory(prefix="jianmu-export-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes,
            )
        return path.read_bytes()


def _onnx_proto(model_bytes: bytes):
    import onnx

    proto = onnx.load_from_string(model_bytes)
    proto.producer_name, proto.producer_version = "jianmu", jianmu.__version__
    return proto


def _gallery(bundle: ModelBundle, items: list, root: Path | None, config: Config) -> Gallery:
    """``export.gallery`` diverse training photos per class (of at most
    :data:`GALLERY_CANDIDATES` drawn with the seed), embedded by the exported bundle itself, as
    thumbnails of the photos as decoded; named by their path under the data root."""
    candidates = _per_class_subset(items, GALLERY_CANDIDATES, config.seed)
    outputs = bundle.run(candidates, 1) if candidates else None
    if outputs is None or not outputs.ok.any():
        raise JianmuError(
            "--gallery needs the model's training photos; pass --data ROOT (and --manifest CSV) "
            "pointing at the training data"
        )
    readable = [item for item, ok in zip(candidates, outputs.ok, strict=True) if ok]
    outputs = outputs.readable()
    chosen = select_gallery(outputs.embeddings, outputs.targets, config.export.gallery)
    paths = [Path(readable[row][0]) for row in chosen]
    timeout = config.data.read_timeout
    jpegs = [make_thumbnail(load_image(path, THUMBNAIL_PX, timeout)) for path in paths]
    sources = [relative_posix(path, root) if root else path.name for path in paths]
    licence = config.export.gallery_licence or NO_LICENCE
    embeddings, classes = outputs.embeddings[chosen], outputs.targets[chosen]
    return Gallery(embeddings, classes, jpegs, sources, licence, per_class=config.export.gallery)


def _per_class_subset(items: list, limit: int, seed: int) -> list:
    """At most ``limit`` items of each class, drawn with ``seed``, in their original order."""
    by_class: dict[int, list[int]] = {}
    for position, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(position)
    kept = [p for group in by_class.values() for p in seeded_subset(group, limit, seed)]
    return [items[position] for position in sorted(kept)]


def _stored_size(blob: bytes, meta: dict[str, Any], form: str) -> int:
    """Bytes the gallery takes in a bundle: its blob (base64 text in ONNX, as is in TorchScript)
    and its description in the metadata."""
    if not blob:
        return 0
    described = len(json.dumps(meta["gallery"], ensure_ascii=False, default=str).encode())
    return described + (4 * -(-len(blob) // 3) if form == "onnx" else len(blob))


def _warnings(config: ExportConfig) -> list[str]:
    if config.gallery and not config.gallery_licence:
        return [
            f"reference gallery stored as '{NO_LICENCE}': check that the data set's licence lets "
            f"its photos travel in a bundle, and say so with --gallery-licence"
        ]
    return []


def _quantize(fp32: bytes, items: list, checkpoint: Checkpoint, config: ExportConfig) -> bytes:
    """Static QDQ int8 (per-channel weights), calibrated on training images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not items:
        raise JianmuError("--int8 needs training images to calibrate on; pass --data/--manifest")
    chosen = seeded_subset(items, config.calibration_images)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            paths = [path for path, _ in chosen]
            batches = stream_batches(paths, checkpoint.preprocessing, batch_size=16)
            self.batches = (b.images for b in batches if len(b.images))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="jianmu-int8-") as folder:
        source, prepared, target = (Path(folder) / n for n in ("a.onnx", "b.onnx", "c.onnx"))
        source.write_bytes(fp32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        return target.read_bytes()


def _trace(module, checkpoint: Checkpoint):
    size = checkpoint.preprocessing.input_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, torch.randn(2, 3, size, size), check_trace=False)


def _save_torchscript(traced, path: Path, extra: dict[str, Any]) -> None:
    # TorchScript is in maintenance (torch suggests torch.export), but it is still the format that
    # loads without Python model code; users who stay in PyTorch asked for it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path), _extra_files=extra)
