"""Running a model over a loader: logits and embeddings, with optional dihedral test-time views."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader

from jianmu.bundle import DIHEDRAL_VIEWS  # noqa: F401 - re-exported for the engine
from jianmu.data.dataset import TolerantImageDataset
from jianmu.data.preprocess import decode_size
from jianmu.data.spec import TransformSpec
from jianmu.data.transforms import build_spec_transform
from jianmu.engine.runner import Outputs
from jianmu.engine.runtime import autocast


def dihedral(images: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` (0..7) of a batch: ``view % 4`` quarter turns, then a flip if ``view >= 4``."""
    rotated = torch.rot90(images, view % 4, dims=(2, 3))
    return rotated.flip(3) if view >= 4 else rotated


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    views: int = 1,
) -> Outputs:
    """Logits and embeddings for every item of ``loader`` in order, averaged over ``views``
    dihedral views. Batches may carry a third element, the per-image ``ok`` flag."""
    model.eval()
    logits, embeddings, targets, oks = [], [], [], []
    for batch in loader:
        images, labels = batch[0], batch[1]
        ok = batch[2] if len(batch) > 2 else torch.ones(len(labels), dtype=torch.bool)
        images = images.to(device)
        batch_logits, batch_embeddings = 0.0, 0.0
        for view in range(views):
            with autocast(device, amp_dtype):
                features = model.forward_features(dihedral(images, view))
                pre_logits = model.forward_head(features, pre_logits=True)
                output = model.get_classifier()(pre_logits)
            batch_logits = batch_logits + output.float()
            batch_embeddings = batch_embeddings + pre_logits.float()
        logits.append((batch_logits / views).cpu())
        embeddings.append((batch_embeddings / views).cpu())
        targets.append(labels)
        oks.append(ok)
    return Outputs(
        torch.cat(logits).numpy(),
        torch.cat(embeddings).flatten(1).numpy(),
        torch.cat(targets).numpy(),
        torch.cat(oks).numpy().astype(bool),
    )


def collect_outputs(
    model: nn.Module,
    items: list,
    spec: TransformSpec,
    batch_size: int = 64,
    views: int = 1,
    cache: bool = False,
) -> Outputs:
    """Outputs of ``model`` on ``(path, label)`` items with the eval transform of ``spec``, in fp32:
    calibration and thresholds are fitted here and must hold for the fp32 bundles that predict."""
    transform = build_spec_transform(spec)
    dataset = TolerantImageDataset(items, transform, decode_size(spec), cache=cache)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    device = next(model.parameters()).device
    with _ieee_fp32():
        return predict_outputs(model, loader, device, None, views)


@contextmanager
def _ieee_fp32():
    """No TF32 on GPUs: its 10-bit mantissa moves scores by 1e-4, more than a threshold allows."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
