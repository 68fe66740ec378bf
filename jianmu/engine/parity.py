"""The export parity check: does the exported bundle compute what the trained model computes?

The bundle runs as it will in the field: through the one runner
(:meth:`jianmu.bundle.ModelBundle.run`), with the numpy/OpenCV preprocessing its metadata
describes. The reference it is compared with is *deliberately independent* of that path: the
PyTorch module in eager mode, fed by the albumentations eval transform of the checkpoint's
preprocessing through a torch DataLoader. This is the one place a model is run another way, so
that a bundle with wrong preprocessing metadata, or a preprocessing path that drifted, cannot
agree with itself and pass. Random tensors (the same input for both) isolate the graph itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from jianmu import metrics
from jianmu.bundle import ModelBundle
from jianmu.config import ExportConfig
from jianmu.data.dataset import TolerantImageDataset
from jianmu.data.preprocess import decode_size
from jianmu.data.spec import TransformSpec
from jianmu.data.transforms import build_spec_transform
from jianmu.errors import JianmuError
from jianmu.outputs import Item

RANDOM_BATCH = 8


class ExportCheckError(JianmuError):
    """The exported model disagrees with the trained one; ``parity`` holds the figures."""

    def __init__(self, message: str, parity: dict[str, Any]) -> None:
        super().__init__(message)
        self.parity = parity


@torch.inference_mode()
def reference_logits(module: nn.Module, spec: TransformSpec, items: list[Item]) -> dict:
    """PyTorch fp32 logits on the independent reference path (albumentations + DataLoader)."""
    dataset = TolerantImageDataset(items, build_spec_transform(spec), decode_size(spec))
    logits, embeddings, ok = [], [], []
    for images, _, good in DataLoader(dataset, batch_size=32, num_workers=0):
        outputs = module(images)
        logits.append(outputs[0].float().numpy())
        embeddings.append(outputs[1].float().flatten(1).numpy())
        ok.append(good.numpy())
    return {
        "logits": np.concatenate(logits),
        "embeddings": np.concatenate(embeddings),
        "ok": np.concatenate(ok).astype(bool),
    }


@torch.inference_mode()
def measure_parity(
    bundle: ModelBundle, module: nn.Module, reference: dict, items: list[Item]
) -> dict[str, Any]:
    """Exported vs PyTorch: on validation images (each with its own preprocessing) and on random
    tensors (the same input for both)."""
    exported = bundle.run(items)
    ok = reference["ok"] & exported.ok
    if not ok.any():
        raise JianmuError("none of the validation images could be read for the parity check")
    ours, theirs = reference["logits"][ok], exported.logits[ok]
    if bundle.class_map is not None:  # classes added after training: the same mapping on both
        temperature = bundle.calibration().temperature
        embeddings = reference["embeddings"][ok]
        ours = bundle.class_map.apply(ours, embeddings, bundle.statistics, temperature)
    targets = exported.targets[ok]
    size = bundle.spec.input_size
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


def check_parity(parity: dict[str, Any], config: ExportConfig) -> None:
    """Mark ``parity`` passed, or raise :class:`ExportCheckError` naming the figure that failed."""
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
