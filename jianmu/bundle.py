"""Any trained model behind one interface: ``load_model(path)`` opens a checkpoint (a run folder or
``.safetensors``), an ONNX bundle (``.onnx``) or a TorchScript bundle (``.torchscript``).

Every form carries the same metadata document (classes, species, taxonomy, preprocessing,
calibration, unknown-species rule and threshold, metrics, manifest hash, versions) and the same
open-set feature statistics, so a prediction means the same whichever form made it. Opening an ONNX
bundle imports numpy, OpenCV and onnxruntime only: no torch.

Where the metadata lives:
- checkpoint: the safetensors header (key ``jianmu``), statistics as ``jianmu_extra.openset.*``;
- ONNX: ``metadata_props`` ``jianmu`` (JSON) and ``jianmu.openset`` (base64 of a safetensors
  blob of the statistics), so that one file is the whole bundle;
- TorchScript: the archive's extra files ``jianmu.json`` and ``jianmu_openset.safetensors``.
"""

from __future__ import annotations

import base64
import json
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.data.spec import TransformSpec
from jianmu.errors import JianmuError
from jianmu.scoring import KnnModel, MahalanobisModel, OpenSetScorer, softmax

BUNDLE_FORMAT = "jianmu.bundle/1"
META_KEY = "jianmu"
STATISTICS_KEY = "jianmu.openset"
TORCHSCRIPT_META = "jianmu.json"
TORCHSCRIPT_STATISTICS = "jianmu_openset.safetensors"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "embeddings")
# The 8 symmetries of a square: end-grain and seed photos have no "up", so each is a valid view.
DIHEDRAL_VIEWS = 8
_STATISTICS = ("means", "precision", "background_mean", "background_precision", "knn")


@dataclass(frozen=True)
class Calibration:
    """What turns outputs of ``views`` test-time views into calibrated verdicts."""

    temperature: float
    rule: str | None  # unknown-species rule; None when the model was never calibrated
    threshold: float | None
    views: int
    exact: bool = True
    """False when no threshold was fitted for this number of views (an older checkpoint)."""


@dataclass
class Prediction:
    """A batch's outputs: calibrated probabilities, unknown-rule scores and the known mask."""

    logits: np.ndarray  # N x C
    embeddings: np.ndarray  # N x D
    probabilities: np.ndarray  # N x C, softmax(logits / temperature)
    scores: np.ndarray  # N unknown-rule scores (NaN without a rule)
    known: np.ndarray  # N bool: score >= threshold (all True without a rule)


class ModelBundle:
    """A model and its metadata. Subclasses implement :meth:`forward` on preprocessed batches."""

    kind = "model"

    def __init__(self, path: str | Path, meta: dict[str, Any], statistics: dict[str, np.ndarray]):
        self.path = Path(path)
        self.meta = meta
        for key in ("classes", "preprocessing"):
            if key not in meta:
                raise JianmuError(f"{path}: refused: bundle metadata lacks {key!r}")
        self.spec = TransformSpec.from_dict(meta["preprocessing"])
        self.scorer = scorer_from_statistics(statistics, self.calibration().temperature)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def species(self) -> list[str | None]:
        return list(self.meta.get("species") or [None] * len(self.classes))

    @property
    def taxonomy_entries(self) -> list[dict[str, Any] | None]:
        """Per class: scientific and Chinese name, genus, family, regulatory ``flags`` (words), or
        None for a class outside the taxonomy. Bundles store them; checkpoints look them up."""
        if "taxonomy_entries" not in self.meta:
            domain = (self.meta.get("taxonomy") or {}).get("domain")
            entries: list[dict[str, Any] | None] = [None] * self.num_classes
            if domain:
                from jianmu.taxonomy import load_taxonomy

                entries = load_taxonomy(domain).entries(self.species)
            self.meta["taxonomy_entries"] = entries
        return list(self.meta["taxonomy_entries"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N x C) and embeddings (N x D) of a preprocessed N x 3 x H x W float32 batch."""
        raise NotImplementedError

    def outputs(self, batch: np.ndarray, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`forward` averaged over the first ``views`` dihedral views (1 = as is)."""
        if not 1 <= views <= DIHEDRAL_VIEWS:
            raise JianmuError(f"views must be 1..{DIHEDRAL_VIEWS}, got {views}")
        logits, embeddings = self.forward(batch)
        for view in range(1, views):
            more_logits, more_embeddings = self.forward(dihedral(batch, view))
            logits, embeddings = logits + more_logits, embeddings + more_embeddings
        return logits / views, embeddings / views

    def calibration(self, views: int = 1) -> Calibration:
        """Temperature and unknown threshold fitted for ``views`` test-time views."""
        return resolve_calibration(self.meta, views)

    def predict(self, batch: np.ndarray, views: int = 1) -> Prediction:
        logits, embeddings = self.outputs(batch, views)
        return self.predict_outputs(logits, embeddings, views)

    def predict_outputs(self, logits: np.ndarray, embeddings: np.ndarray, views: int) -> Prediction:
        """:class:`Prediction` from outputs already computed with ``views`` views."""
        calibration = self.calibration(views)
        probabilities = softmax(logits, calibration.temperature)
        if self.scorer is None or calibration.rule is None:
            scores = np.full(len(logits), np.nan)
            known = np.ones(len(logits), dtype=bool)
        else:
            scorer = replace(self.scorer, temperature=calibration.temperature)
            scores = scorer.score(calibration.rule, _Outputs(logits, embeddings))
            known = scores >= calibration.threshold
        return Prediction(logits, embeddings, probabilities, scores, known)

    def predict_proba(self, batch: np.ndarray, views: int = 1) -> np.ndarray:
        """Calibrated class probabilities (N x C) of a preprocessed batch."""
        logits, _ = self.outputs(batch, views)
        return softmax(logits, self.calibration(views).temperature)

    def _check_output_size(self, size: Any) -> None:
        if isinstance(size, int) and size != self.num_classes:
            raise JianmuError(
                f"{self.path}: refused: the model outputs {size} classes but its metadata lists "
                f"{self.num_classes}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.num_classes} classes)"


@dataclass
class _Outputs:
    logits: np.ndarray
    embeddings: np.ndarray


def dihedral(batch: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0..7) of an N x C x H x W batch: ``view % 4`` quarter turns, then a flip
    if ``view >= 4`` (the same views as ``jianmu.engine.inference.dihedral``)."""
    rotated = np.rot90(batch, view % 4, axes=(2, 3))
    return np.ascontiguousarray(rotated[..., ::-1] if view >= 4 else rotated)


def resolve_calibration(meta: dict[str, Any], views: int = 1) -> Calibration:
    """The temperature and unknown threshold in ``meta`` that belong to ``views`` views."""
    calibration = meta.get("calibration")
    unknown = meta.get("unknown")
    if not calibration:
        return Calibration(1.0, None, None, views)
    fitted_views = int(calibration.get("views", 1))
    rule = unknown["rule"] if unknown else None
    if views == fitted_views:
        threshold = float(unknown["threshold"]) if unknown else None
        return Calibration(float(calibration["temperature"]), rule, threshold, views)
    single = calibration.get("single_view")
    if views == 1 and single:
        threshold = float(single["thresholds"][rule]) if rule else None
        return Calibration(float(single["temperature"]), rule, threshold, views)
    threshold = float(unknown["threshold"]) if unknown else None
    return Calibration(float(calibration["temperature"]), rule, threshold, views, exact=False)


def scorer_from_statistics(
    statistics: dict[str, np.ndarray], temperature: float
) -> OpenSetScorer | None:
    """An :class:`OpenSetScorer` from ``openset.*`` arrays; None when there are none."""
    found = {name.removeprefix("openset."): value for name, value in statistics.items()}
    if not found:
        return None

    def gaussian(means: str, precision: str) -> MahalanobisModel | None:
        if means not in found or precision not in found:
            return None
        return MahalanobisModel(
            np.asarray(found[means], dtype=np.float64), np.asarray(found[precision], np.float64)
        )

    knn = found.get("knn")
    return OpenSetScorer(
        temperature,
        gaussian("means", "precision"),
        gaussian("background_mean", "background_precision"),
        KnnModel(np.asarray(knn, dtype=np.float32)) if knn is not None else None,
    )


def statistics_for(meta: dict[str, Any], statistics: dict[str, np.ndarray]) -> dict[str, Any]:
    """The statistics a bundle needs for its rule (the kNN bank only for the ``knn`` rule)."""
    rule = (meta.get("unknown") or {}).get("rule")
    return {
        name: value
        for name, value in statistics.items()
        if name.removeprefix("openset.") in _STATISTICS and (name != "openset.knn" or rule == "knn")
    }


def encode_statistics(statistics: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in statistics.items()}
    return save(arrays) if arrays else b""


def decode_statistics(blob: bytes, where: str | Path) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    from safetensors.numpy import load

    try:
        return dict(load(blob))
    except Exception as error:  # noqa: BLE001 - any parse failure is a refused bundle
        raise JianmuError(f"{where}: refused: unreadable open-set statistics ({error})") from None


# --- the three forms ------------------------------------------------------------------------------


class OnnxBundle(ModelBundle):
    """An ONNX bundle run by onnxruntime on the CPU."""

    kind = "onnx"

    def __init__(self, path: str | Path, model: bytes | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes about unused initializers
        options.intra_op_num_threads = threads
        # No busy-waiting between batches: the image-decoding threads need those cores
        # (end-to-end predict +10-15% on 2 cores, model-only speed unchanged).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                model if model is not None else str(path), options, ["CPUExecutionProvider"]
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise JianmuError(f"{path}: not a readable ONNX model ({message})") from None
        properties = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in properties:
            raise JianmuError(f"{path}: refused: no jianmu metadata in this ONNX model")
        meta = _parse_meta(properties[META_KEY], path)
        blob = base64.b64decode(properties.get(STATISTICS_KEY, ""))
        super().__init__(path, meta, decode_statistics(blob, path))
        names = [output.name for output in self.session.get_outputs()]
        if tuple(names[:2]) != OUTPUT_NAMES:
            raise JianmuError(f"{path}: refused: outputs {names}, expected {list(OUTPUT_NAMES)}")
        self._check_output_size(self.session.get_outputs()[0].shape[-1])

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        )
        return logits, embeddings.reshape(len(embeddings), -1)


class TorchBundle(ModelBundle):
    """A checkpoint (timm model rebuilt from its metadata) or a TorchScript bundle."""

    def __init__(self, path, module, meta, statistics, kind: str, device: str = "cpu") -> None:
        super().__init__(path, meta, statistics)
        import torch

        self.kind = kind
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self._torch = torch

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            logits, embeddings = self.module(images.to(self.device))
        return logits.float().cpu().numpy(), embeddings.float().flatten(1).cpu().numpy()


def load_model(path: str | Path, device: str = "cpu") -> ModelBundle:
    """Open a run folder, a checkpoint, an ONNX bundle or a TorchScript bundle.

    Raises:
        JianmuError: missing file, unknown format, missing or inconsistent metadata, or a file
            that carries pickled Python objects (refused: only tensors are ever unpickled).
    """
    path = Path(path)
    if not path.exists():
        raise JianmuError(f"model not found: {path}")
    if path.is_dir() or path.suffix == ".safetensors":
        return _load_checkpoint(path, device)
    if path.suffix == ".onnx":
        return OnnxBundle(path)
    if _is_torchscript(path):
        return _load_torchscript(path, device)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        _refuse_pickle(path)
    raise JianmuError(
        f"{path}: unknown model format; expected a run folder, .safetensors, .onnx or .torchscript"
    )


def _load_checkpoint(path: Path, device: str) -> TorchBundle:
    from jianmu.models import OutputsModule, load_checkpoint

    checkpoint = load_checkpoint(path)
    statistics = {k: v.numpy() for k, v in checkpoint.extras.items() if k.startswith("openset.")}
    module = OutputsModule(checkpoint.build_model())
    return TorchBundle(path, module, checkpoint.meta, statistics, "checkpoint", device)


def _load_torchscript(path: Path, device: str) -> TorchBundle:
    import torch

    extra = {TORCHSCRIPT_META: "", TORCHSCRIPT_STATISTICS: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "deprecated, use torch.export"
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError and others
        raise JianmuError(f"{path}: not a readable TorchScript bundle ({error})") from None
    if not extra[TORCHSCRIPT_META]:
        raise JianmuError(f"{path}: refused: no jianmu metadata in this TorchScript file")
    meta = _parse_meta(extra[TORCHSCRIPT_META], path)
    statistics = decode_statistics(extra[TORCHSCRIPT_STATISTICS], path)
    bundle = TorchBundle(path, module, meta, statistics, "torchscript", device)
    size = int(meta.get("export", {}).get("num_outputs", bundle.num_classes))
    bundle._check_output_size(size)
    return bundle


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _refuse_pickle(path: Path) -> None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - an unpickling failure of any kind is refused
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise JianmuError(
            f"{path}: refused: this file carries pickled Python objects, not just tensors, and "
            f"jianmu never unpickles those ({type(error).__name__}: {first})"
        ) from None
    raise JianmuError(
        f"{path}: a plain tensor file without jianmu metadata; use a jianmu checkpoint "
        f"(.safetensors) or an exported bundle (.onnx, .torchscript)"
    )


def _parse_meta(text: str | bytes, path: str | Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (ValueError, TypeError) as error:
        raise JianmuError(f"{path}: refused: unreadable jianmu metadata ({error})") from None
    if not isinstance(meta, dict):
        raise JianmuError(f"{path}: refused: jianmu metadata is not a JSON object")
    return meta
