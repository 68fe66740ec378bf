"""``jianmu export``: a self-contained, verified bundle (ONNX, optionally int8, or TorchScript).

Every export is checked before it is kept: the bundle, with its own preprocessing (numpy/OpenCV,
from its metadata), and the PyTorch model, with the training pipeline's eval transform, run on
the run's validation images and on random tensors. Too little top-1 agreement (fp32), too large a
logit difference on random tensors (fp32) or too large an accuracy drop (int8) fails the export
and leaves no bundle behind; the figures are printed and stored in the bundle.

The ONNX graph is written by PyTorch's TorchScript-based exporter (``dynamo=False``), chosen
explicitly: it needs no ``onnxscript`` and handles timm's convolutional networks; the tests run
this path. int8 is static QDQ quantization calibrated on training images (onnxruntime's tools);
dynamic int8 is much slower than fp32 for convolutional networks.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import jianmu
from jianmu import metrics
from jianmu.bundle import (
    BUNDLE_FORMAT,
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAMES,
    STATISTICS_KEY,
    TORCHSCRIPT_META,
    TORCHSCRIPT_STATISTICS,
    ModelBundle,
    OnnxBundle,
    TorchBundle,
    encode_statistics,
    statistics_for,
)
from jianmu.config import IMAGE_EXTENSIONS, ExportConfig
from jianmu.data.dataset import TolerantImageDataset
from jianmu.data.preprocess import decode_size
from jianmu.data.samples import find_samples
from jianmu.data.split import read_manifest
from jianmu.data.transforms import build_spec_transform
from jianmu.engine.calibrate import rule_thresholds, seeded_subset
from jianmu.engine.runner import bundle_outputs
from jianmu.errors import JianmuError
from jianmu.models import Checkpoint, OutputsModule, atomic_write, load_checkpoint

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}
RANDOM_BATCH = 8


class ExportCheckError(JianmuError):
    """The exported model disagrees with the trained one; ``parity`` holds the figures."""

    def __init__(self, message: str, parity: dict[str, Any]) -> None:
        super().__init__(message)
        self.parity = parity


@dataclass
class ExportResult:
    path: Path
    format: str
    int8: bool
    parity: dict[str, Any]
    seconds: float
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)


def export(
    model_path: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    int8: bool = False,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    config: ExportConfig | None = None,
) -> ExportResult:
    """Export a run folder or checkpoint to a verified bundle at ``out``.

    Args:
        format: ``onnx`` or ``torchscript``.
        int8: static int8 quantization (ONNX only).
        data, manifest: where the validation images are; default: the run's ``manifest.csv``
            and the data root in the checkpoint's config.

    Raises:
        ExportCheckError: the parity check failed (no bundle is written).
        JianmuError: bad arguments, or no validation images to check the export with.
    """
    config = (config or ExportConfig()).model_copy(update={"format": format, "int8": int8})
    if format not in SUFFIXES:
        raise JianmuError(f"unknown export format {format!r}; choose onnx or torchscript")
    if int8 and format != "onnx":
        raise JianmuError("--int8 needs --format onnx (static quantization through onnxruntime)")
    started = time.perf_counter()
    checkpoint = load_checkpoint(model_path)
    out = Path(out) if out is not None else _default_out(Path(model_path), format, int8)
    items = _items(Path(model_path), checkpoint, data, manifest)
    if not items["val"]:
        raise JianmuError(
            f"{model_path}: no validation images to check the export against; pass --data ROOT "
            f"(and --manifest CSV) pointing at the training data"
        )
    val = seeded_subset(items["val"], config.parity_images)
    module = OutputsModule(checkpoint.build_model()).eval()
    reference = _reference_logits(module, checkpoint, val)
    meta = _bundle_meta(checkpoint, model_path, config)
    statistics = statistics_for(meta, {k: v.numpy() for k, v in checkpoint.extras.items()})
    if format == "onnx":
        fp32 = _onnx_bytes(module, checkpoint, config.opset)
        model_bytes = _quantize(fp32, items["train"], checkpoint, config) if int8 else fp32
        proto = _onnx_proto(model_bytes)
        _set_metadata(proto, meta, statistics)
        bundle: ModelBundle = OnnxBundle(out, model=proto.SerializeToString())
    else:
        traced = _trace(module, checkpoint)
        bundle = TorchBundle(out, traced, meta, statistics, "torchscript")
    parity = _parity(bundle, module, reference, val, checkpoint)
    _check(parity, config)
    meta["export"]["parity"] = parity
    if int8 and bundle.scorer is not None and "unknown" in meta:
        _refit_thresholds(bundle, meta, val, checkpoint)
    if format == "onnx":
        _set_metadata(proto, meta, statistics)  # now with the parity figures
        atomic_write(out, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    else:
        extra = {
            TORCHSCRIPT_META: json.dumps(meta, ensure_ascii=False, default=str),
            TORCHSCRIPT_STATISTICS: encode_statistics(statistics),
        }
        atomic_write(out, lambda tmp: _save_torchscript(traced, tmp, extra))
    return ExportResult(
        out, format, int8, parity, time.perf_counter() - started, out.stat().st_size, meta
    )


def _default_out(model_path: Path, format: str, int8: bool) -> Path:
    folder = model_path if model_path.is_dir() else model_path.parent
    stem = model_path.stem if model_path.is_file() else "model"
    return folder / f"{stem}{'.int8' if int8 else ''}{SUFFIXES[format]}"


def _items(model_path: Path, checkpoint: Checkpoint, data, manifest) -> dict[str, list]:
    """Validation (parity) and training (int8 calibration) items ``(path, label index)``."""
    folder = model_path if model_path.is_dir() else model_path.parent
    root = Path(data) if data is not None else _config_root(checkpoint)
    manifest = Path(manifest) if manifest is not None else folder / "manifest.csv"
    index = {name: i for i, name in enumerate(checkpoint.classes)}
    if root is None or not root.is_dir():
        return {"val": [], "train": []}
    if manifest.is_file():
        rows = read_manifest(manifest, root=root)
        return {
            split: [(root / r.path, index[r.label]) for r in rows if r.split == split]
            for split in ("val", "train")
        }
    # No manifest: every image of the model's classes under ``root`` serves both purposes.
    samples = find_samples(root, IMAGE_EXTENSIONS)
    found = [(s.path, index[s.label]) for s in samples if s.label in index]
    return {"val": found, "train": found}


def _config_root(checkpoint: Checkpoint) -> Path | None:
    root = ((checkpoint.meta.get("config") or {}).get("data") or {}).get("root")
    return Path(root) if root else None


@torch.inference_mode()
def _reference_logits(module, checkpoint: Checkpoint, items: list) -> dict[str, np.ndarray]:
    """PyTorch fp32 logits with the training pipeline's eval transform (albumentations)."""
    spec = checkpoint.preprocessing
    dataset = TolerantImageDataset(items, build_spec_transform(spec), decode_size(spec))
    logits, ok = [], []
    for images, _, good in DataLoader(dataset, batch_size=32, num_workers=0):
        logits.append(module(images)[0].float().numpy())
        ok.append(good.numpy())
    return {"logits": np.concatenate(logits), "ok": np.concatenate(ok).astype(bool)}


def _bundle_meta(checkpoint: Checkpoint, source, config: ExportConfig) -> dict[str, Any]:
    import onnxruntime
    import timm

    from jianmu.taxonomy import load_taxonomy

    meta = dict(checkpoint.meta)
    domain = (meta.get("taxonomy") or {}).get("domain")
    species = meta.get("species") or [None] * len(checkpoint.classes)
    if domain:
        meta["taxonomy_entries"] = load_taxonomy(domain).entries(species)
    test_metrics = _test_metrics(Path(source))
    if test_metrics is not None:
        meta["test_metrics"] = test_metrics
    meta["format"] = BUNDLE_FORMAT
    meta["export"] = {
        "format": config.format,
        "int8": config.int8,
        "opset": config.opset if config.format == "onnx" else None,
        "num_outputs": len(checkpoint.classes),
        "source": str(source),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "jianmu_version": jianmu.__version__,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    return meta


def _test_metrics(source: Path) -> dict[str, Any] | None:
    folder = source if source.is_dir() else source.parent
    path = folder / "test_metrics.json"
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


def _set_metadata(proto, meta: dict[str, Any], statistics: dict[str, np.ndarray]) -> None:
    """Replace the bundle's metadata: the JSON document and the open-set statistics."""
    del proto.metadata_props[:]
    document = json.dumps(meta, ensure_ascii=False, default=str)
    blob = base64.b64encode(encode_statistics(statistics)).decode("ascii")
    for key, value in ((META_KEY, document), (STATISTICS_KEY, blob)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _quantize(fp32: bytes, items: list, checkpoint: Checkpoint, config: ExportConfig) -> bytes:
    """Static QDQ int8 (per-channel weights), calibrated on training images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from jianmu.data.stream import stream_batches

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


@torch.inference_mode()
def _parity(bundle, module, reference, items, checkpoint: Checkpoint) -> dict[str, Any]:
    """Exported vs PyTorch: on validation images (each with its own preprocessing) and on random
    tensors (the same input for both)."""
    exported = bundle_outputs(bundle, items)
    ok = reference["ok"] & exported.ok
    if not ok.any():
        raise JianmuError("none of the validation images could be read for the parity check")
    ours, theirs = reference["logits"][ok], exported.logits[ok]
    targets = exported.targets[ok]
    size = checkpoint.preprocessing.input_size
    noise = np.random.default_rng(0).standard_normal((RANDOM_BATCH, 3, size, size))
    noise = noise.astype(np.float32)
    random_reference = module(torch.from_numpy(noise))[0].float().numpy()
    random_exported = bundle.forward(noise)[0]
    scale = float(np.ptp(random_reference)) or 1.0
    return {
        "images": int(ok.sum()),
        "max_abs_logit_diff": float(np.abs(ours - theirs).max()),
        "top1_agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
        "top1_reference": metrics.topk_accuracy(ours, targets, 1),
        "top1_export": metrics.topk_accuracy(theirs, targets, 1),
        "random_tensors": RANDOM_BATCH,
        "random_max_abs_logit_diff": float(np.abs(random_reference - random_exported).max()),
        "random_logit_range": scale,
        "random_top1_agreement": float(
            np.mean(random_reference.argmax(1) == random_exported.argmax(1))
        ),
    }


def _check(parity: dict[str, Any], config: ExportConfig) -> None:
    parity["passed"] = False
    if config.int8:
        drop = 100.0 * (parity["top1_reference"] - parity["top1_export"])
        parity["int8_top1_drop_points"] = drop
        if drop > config.int8_max_top1_drop:
            raise ExportCheckError(
                f"int8 export refused: validation top-1 fell {drop:.2f} points "
                f"({parity['top1_reference']:.4f} -> {parity['top1_export']:.4f}), more than "
                f"export.int8_max_top1_drop={config.int8_max_top1_drop}",
                parity,
            )
    else:
        if parity["top1_agreement"] < config.min_top1_agreement:
            raise ExportCheckError(
                f"export refused: the exported model agrees with PyTorch on "
                f"{parity['top1_agreement']:.2%} of {parity['images']} validation images' top-1, "
                f"under export.min_top1_agreement={config.min_top1_agreement:.2%} "
                f"(max logit difference {parity['max_abs_logit_diff']:.3g})",
                parity,
            )
        relative = parity["random_max_abs_logit_diff"] / parity["random_logit_range"]
        if relative > config.max_logit_difference:
            raise ExportCheckError(
                f"export refused: on random tensors the logits differ by "
                f"{parity['random_max_abs_logit_diff']:.3g} ({relative:.2g} of their range), "
                f"over export.max_logit_difference={config.max_logit_difference}",
                parity,
            )
    parity["passed"] = True


def _refit_thresholds(bundle, meta: dict[str, Any], items: list, checkpoint: Checkpoint) -> None:
    """int8 moves the embeddings a little: choose the unknown thresholds again on the same
    validation images, for the same known-species recall, so the rule keeps its promise."""
    target = float(meta["unknown"]["target_known_recall"])
    calibration = meta["calibration"]
    views_fitted = int(calibration.get("views", 1))
    for views in sorted({1, views_fitted}):
        outputs = bundle_outputs(bundle, items, views=views)
        outputs = outputs.subset(outputs.ok)
        scorer = replace(bundle.scorer, temperature=bundle.calibration(views).temperature)
        thresholds = rule_thresholds(scorer, outputs, target)
        if views == views_fitted:
            meta["unknown"]["thresholds"] = thresholds
            meta["unknown"]["threshold"] = thresholds[meta["unknown"]["rule"]]
        if views == 1 and views_fitted > 1 and "single_view" in calibration:
            calibration["single_view"]["thresholds"] = thresholds
    meta["unknown"]["refit_for_int8"] = True
