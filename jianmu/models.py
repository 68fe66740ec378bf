"""The one place that calls ``timm.create_model``; checkpoint save/load (safetensors, atomic).

A checkpoint is ``NAME.safetensors``: the model weights plus, in the safetensors metadata, a JSON
document with everything needed to use it without the training run (model name, classes, taxonomy
version, preprocessing, config, epoch, metrics, ...). Resumable training state (optimizer,
scheduler, EMA, RNG) goes beside it in ``NAME.state.pt``, read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from jianmu.calibration.extend import network_outputs
from jianmu.config import ModelConfig
from jianmu.data.spec import TransformSpec, resolve_transform_spec
from jianmu.errors import JianmuError
from jianmu.files import atomic_write
from jianmu.rundir import checkpoint_file

CHECKPOINT_FORMAT = "jianmu.checkpoint/1"
_META_KEY = "jianmu"
_EXTRA_PREFIX = "jianmu_extra."


def build_model(config: ModelConfig, num_classes: int, hub_check: Callable[[], bool] | None = None):
    """Create a timm classifier for ``num_classes``; load local or hub weights when asked."""
    wants_hub = config.pretrained and config.pretrained_path is None
    if wants_hub and not (hub_check or _hub_reachable)():
        raise JianmuError(
            "model.pretrained=true downloads weights from the Hugging Face hub, which cannot be "
            "reached from here; set model.pretrained_path to a local weights file instead"
        )
    try:
        model = timm.create_model(
            config.name,
            pretrained=wants_hub,
            num_classes=num_classes,
            drop_rate=config.drop_rate,
            drop_path_rate=config.drop_path_rate or None,
        )
    except RuntimeError as error:
        if "Unknown model" in str(error):
            close = timm.list_models(f"*{config.name.split('_')[0]}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise JianmuError(f"model.name: unknown timm model {config.name!r}{hint}") from None
        raise
    if config.pretrained_path is not None:
        load_pretrained_weights(model, config.pretrained_path)
    return model


def resolve_preprocessing(model: nn.Module, config: ModelConfig) -> TransformSpec:
    """Mean/std/interpolation from the model (timm's data config); size and crop from our config."""
    data_config = timm.data.resolve_model_data_config(model)
    return resolve_transform_spec(data_config, img_size=config.img_size, crop_pct=config.crop_pct)


def load_pretrained_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a safetensors or timm/torchvision state dict; tensors whose shape differs (the head) are
    skipped and stay freshly initialised. Returns the names of the skipped/missing tensors."""
    path = Path(path)
    if not path.is_file():
        raise JianmuError(f"model.pretrained_path: file not found: {path}")
    state = _read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable or len(usable) < 0.5 * len(own):
        raise JianmuError(
            f"{path}: only {len(usable)} of {len(own)} tensors fit model "
            f"{type(model).__name__}; are these weights for another architecture?"
        )
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise JianmuError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a refused file
        raise JianmuError(
            f"{path}: refused: only plain tensor checkpoints load (weights_only); "
            f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise JianmuError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Weights plus the metadata that makes them usable on their own."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors beside the weights, e.g. the open-set feature statistics (``openset.*``)."""

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> TransformSpec:
        return TransformSpec.from_dict(self.meta["preprocessing"])

    def build_model(self) -> nn.Module:
        """Recreate the model from the checkpoint alone and load its weights."""
        model = timm.create_model(self.meta["model_name"], num_classes=network_outputs(self.meta))
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(
    path: str | Path,
    model: nn.Module | dict[str, torch.Tensor],
    meta: dict[str, Any],
    extras: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save weights (safetensors) with ``meta`` as JSON in the file's metadata, atomically.

    ``extras`` are stored under ``_EXTRA_PREFIX`` and come back in :attr:`Checkpoint.extras`.
    """
    weights = model if isinstance(model, dict) else unwrap_model(model).state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    for name, tensor in (extras or {}).items():
        state[_EXTRA_PREFIX + name] = tensor.detach().cpu().contiguous()
    document = json.dumps({"format": CHECKPOINT_FORMAT, **meta}, default=str, ensure_ascii=False)
    metadata = {_META_KEY: document}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a jianmu checkpoint (a run folder means its ``best.safetensors``)."""
    path = _checkpoint_file(path)
    meta = read_checkpoint_meta(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise JianmuError(f"{path}: not a readable checkpoint ({error})") from None
    extras = {
        k.removeprefix(_EXTRA_PREFIX): v for k, v in state.items() if k.startswith(_EXTRA_PREFIX)
    }
    weights = {k: v for k, v in state.items() if not k.startswith(_EXTRA_PREFIX)}
    return Checkpoint(weights, meta, extras)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint from its header alone, without reading the weights."""
    path = _checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise JianmuError(f"{path}: not a readable checkpoint ({error})") from None
    if _META_KEY not in metadata:
        raise JianmuError(f"{path}: no jianmu metadata; is this a plain weights file?")
    meta = json.loads(metadata[_META_KEY])
    for key in ("model_name", "classes", "preprocessing"):
        if key not in meta:
            raise JianmuError(f"{path}: checkpoint metadata lacks {key!r}")
    return meta


def _checkpoint_file(path: str | Path) -> Path:
    path = checkpoint_file(Path(path))
    if not path.is_file():
        raise JianmuError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise JianmuError(f"{path}: jianmu checkpoints are .safetensors files")
    return path


class OutputsModule(nn.Module):
    """A timm classifier that returns ``(logits, embeddings)``, what every exported bundle outputs;
    the embeddings (the classifier's input) feed the unknown-species rules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        embeddings = self.model.forward_head(features, pre_logits=True)
        return self.model.get_classifier()(embeddings), embeddings.flatten(1)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
