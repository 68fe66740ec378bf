"""Any trained model behind one interface: ``load_model(path)`` opens a checkpoint (a run folder or
``.safetensors``), an ONNX bundle (``.onnx``) or a TorchScript bundle (``.torchscript``), and
:meth:`TorchBundle.from_checkpoint` wraps a checkpoint already in memory.

This is the one way a model is run over images: :meth:`ModelBundle.stream` decodes them in a
thread pool with the one eval preprocessing (:mod:`jianmu.data.preprocess`) and runs the model
form's :meth:`~ModelBundle.forward`; :meth:`ModelBundle.run` collects the outputs of a list of
items. Calibration fits on it, eval measures with it, the export parity check and predict use it.

Every form carries the same metadata document (classes, species, taxonomy, preprocessing,
calibration, unknown-species rule and threshold, metrics, manifest hash, versions) and the same
open-set feature statistics, so a prediction means the same whichever form made it. Opening an ONNX
bundle imports numpy, OpenCV and onnxruntime only: no torch.

Where the metadata lives:
- checkpoint: the safetensors header (key ``jianmu``), statistics as ``jianmu_extra.openset.*``;
- ONNX: ``metadata_props`` ``jianmu`` (JSON) and ``jianmu.openset`` (base64 of a safetensors
  blob of the statistics), so that one file is the whole bundle;
- TorchScript: the archive's extra files ``jianmu.json`` and ``jianmu_openset.safetensors``.

An exported bundle may also carry reference photos (:mod:`jianmu.gallery`, ``export.gallery``):
ONNX ``metadata_props`` ``jianmu.gallery`` (base64 of the gallery's safetensors blob),
TorchScript the extra file ``jianmu_gallery.safetensors``; :attr:`ModelBundle.gallery` decodes
them on first use.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.calibration.apply import Calibration, Calibrator
from jianmu.calibration.extend import ClassMap, network_outputs
from jianmu.calibration.scores import FeatureStatistics
from jianmu.config import AugmentConfig, DataConfig
from jianmu.data.images import READ_TIMEOUT
from jianmu.data.preprocess import DIHEDRAL_VIEWS, augmented_views, dihedral
from jianmu.data.quality import MEASURES, QualityGate
from jianmu.data.spec import TransformSpec
from jianmu.data.stream import Batch, Decode, stream_batches
from jianmu.errors import JianmuError
from jianmu.gallery import Gallery
from jianmu.outputs import Item, Outputs, Prediction
from jianmu.taxonomy import load_taxonomy

BUNDLE_FORMAT = "jianmu.bundle/1"
META_KEY = "jianmu"
STATISTICS_KEY = "jianmu.openset"
TORCHSCRIPT_META = "jianmu.json"
TORCHSCRIPT_STATISTICS = "jianmu_openset.safetensors"
GALLERY_KEY = "jianmu.gallery"
TORCHSCRIPT_GALLERY = "jianmu_gallery.safetensors"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "embeddings")
# Images per batch. Measured end to end on a 2-core CPU (resnet18 and mobilenetv3_large_100 ONNX,
# 1600x1200 and 4000x3000 JPEGs): 32 beat 8 and 16 by 5-25%; 64 was a little faster again but
# doubles the preprocessed images held in flight.
BATCH_SIZE = 32


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
        self.statistics = FeatureStatistics.from_arrays(statistics)
        self.calibrator = Calibrator(meta, self.statistics)
        self.class_map = ClassMap.from_meta(meta)
        """Classes added or removed after training (``jianmu add-species``); None: as trained."""

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
            self.meta["taxonomy_entries"] = taxonomy_entries(self.meta)
        return list(self.meta["taxonomy_entries"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def min_image_side(self) -> int:
        """The shorter side under which a photo is too small to judge: ``data.min_image_side``
        of the model's training (the audit's "very small"), at most its input size."""
        data = (self.meta.get("config") or {}).get("data") or {}
        return min(
            int(data.get("min_image_side", DataConfig().min_image_side)), self.spec.input_size
        )

    @property
    def tta_views(self) -> int:
        """The views test-time augmentation averages for this model: those its training's flips
        and quarter turns covered (:func:`~jianmu.data.preprocess.augmented_views`; 4 for an
        insect wing, which has an up, 8 for end grain); all 8 where the metadata does not say."""
        augment = (self.meta.get("config") or {}).get("augment")
        if not augment:
            return DIHEDRAL_VIEWS
        flips = {name: augment[name] for name in ("hflip", "vflip", "rotate90") if name in augment}
        return augmented_views(AugmentConfig(**flips))

    @functools.cached_property
    def gallery(self) -> Gallery | None:
        """The reference photos an exported bundle carries (``export.gallery``), decoded on first
        use: a bundle without them, a checkpoint or a run folder has None.

        Raises:
            JianmuError: an unreadable gallery, or one that disagrees with the metadata.
        """
        blob = self._gallery_blob()
        if not blob:
            return None
        gallery = Gallery.from_blob(blob, self.path, self.num_classes)
        described = (self.meta.get("gallery") or {}).get("count", len(gallery))
        if described != len(gallery):
            raise JianmuError(
                f"{self.path}: refused: the reference gallery holds {len(gallery)} photos, its "
                f"metadata says {described}"
            )
        return gallery

    def _gallery_blob(self) -> bytes:
        """The stored gallery blob (b"": none); each form knows where it keeps it."""
        return b""

    @property
    def quality_gate(self) -> QualityGate | None:
        """The photo-quality bounds fitted on the model's training photos (None: trained before
        the gate existed)."""
        return QualityGate.from_meta(self.meta)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N x C) and embeddings (N x D) of a preprocessed N x 3 x H x W float32 batch."""
        raise NotImplementedError

    @property
    def extended(self) -> dict[str, Any] | None:
        """What was added to or removed from the model after training, with its provenance
        (``jianmu add-species``); None for a model as trained."""
        return self.meta.get("extension")

    def extension_summary(self) -> dict[str, Any] | None:
        """Which classes were added after training and which removed, from which base model
        (its SHA-256) and when: what predict shows for an extended model; None for one as
        trained."""
        if self.class_map is None:
            return None
        history = self.extended.get("history") or [{}]
        return {
            "added": self.classes[len(self.class_map.keep) :],
            "removed": [name for step in history for name in step.get("removed", [])],
            "base_sha256": (history[0].get("base") or {}).get("sha256"),
            "steps": len(history),
            "date": history[-1].get("date"),
        }

    def outputs(self, batch: np.ndarray, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The model's logits and embeddings of a batch: :meth:`forward` averaged over the first
        ``views`` dihedral views (1 = as is), then mapped to the model's classes when classes
        were added or removed (:class:`~jianmu.calibration.extend.ClassMap`)."""
        if not 1 <= views <= DIHEDRAL_VIEWS:
            raise JianmuError(f"views must be 1..{DIHEDRAL_VIEWS}, got {views}")
        logits, embeddings = self.forward(batch)
        for view in range(1, views):
            more_logits, more_embeddings = self.forward(dihedral(batch, view))
            logits, embeddings = logits + more_logits, embeddings + more_embeddings
        logits, embeddings = logits / views, embeddings / views
        if self.class_map is not None:
            temperature = self.calibration(views).temperature
            logits = self.class_map.apply(logits, embeddings, self.statistics, temperature)
        return logits, embeddings

    def stream(
        self,
        paths: Iterable[str | Path],
        views: int = 1,
        batch_size: int | None = None,
        workers: int | None = None,
        decode: Decode | None = None,
        read_timeout: float | None = READ_TIMEOUT,
    ) -> Iterator[tuple[Batch, np.ndarray, np.ndarray]]:
        """``(batch, logits, embeddings)`` for consecutive batches of ``paths``, in order, with
        memory that stays flat; the outputs are rows of the batch's readable images only
        (``batch.ok``). ``decode`` may replace the decoder (see
        :func:`jianmu.data.stream.stream_batches`)."""
        batches = stream_batches(
            paths, self.spec, batch_size or BATCH_SIZE, workers, decode=decode,
            read_timeout=read_timeout,
        )  # fmt: skip
        try:
            for batch in batches:
                if len(batch.images):
                    logits, embeddings = self.outputs(batch.images, views)
                else:
                    logits = np.zeros((0, self.num_classes), np.float32)
                    embeddings = np.zeros((0, 0), np.float32)
                yield batch, logits, embeddings
        finally:
            batches.close()

    def run(
        self,
        items: Sequence[Item],
        views: int = 1,
        batch_size: int | None = None,
        workers: int | None = None,
        read_timeout: float | None = READ_TIMEOUT,
    ) -> Outputs:
        """Outputs on ``(path, class index)`` items, one row each (zeros for unreadable images),
        with the photo-quality measures of each."""
        logits: np.ndarray | None = None
        embeddings: np.ndarray | None = None
        ok = np.zeros(len(items), dtype=bool)
        errors: dict[int, str] = {}
        quality = np.full((len(items), len(MEASURES)), np.nan, np.float32)
        for batch, batch_logits, batch_embeddings in self.stream(
            (path for path, _ in items), views, batch_size, workers, read_timeout=read_timeout
        ):
            for position, reason in batch.errors.items():
                errors[batch.start + position] = reason
            quality[batch.start : batch.start + len(batch.paths)] = batch.quality
            if not len(batch_logits):
                continue
            if logits is None:
                logits = np.zeros((len(items), batch_logits.shape[1]), np.float32)
                embeddings = np.zeros((len(items), batch_embeddings.shape[1]), np.float32)
            rows = batch.start + np.flatnonzero(batch.ok)
            logits[rows], embeddings[rows] = batch_logits, batch_embeddings
            ok[rows] = True
        if logits is None:
            logits = np.zeros((len(items), self.num_classes), np.float32)
            embeddings = np.zeros((len(items), 1), np.float32)
        targets = np.asarray([label for _, label in items], dtype=np.int64)
        return Outputs(logits, embeddings, targets, ok, errors, quality)

    def calibration(self, views: int = 1) -> Calibration:
        """Temperature and unknown threshold fitted for ``views`` test-time views."""
        return self.calibrator.calibration(views)

    def predict(self, batch: np.ndarray, views: int = 1) -> Prediction:
        """Calibrated probabilities, unknown-rule scores and verdicts of a preprocessed batch."""
        return self.calibrator.apply(*self.outputs(batch, views), views)

    def predict_outputs(self, logits: np.ndarray, embeddings: np.ndarray, views: int) -> Prediction:
        """:class:`Prediction` from outputs already computed with ``views`` views."""
        return self.calibrator.apply(logits, embeddings, views)

    def predict_proba(self, batch: np.ndarray, views: int = 1) -> np.ndarray:
        """Calibrated class probabilities (N x C) of a preprocessed batch."""
        return self.predict(batch, views).probabilities

    def _check_output_size(self, size: Any) -> None:
        expected = network_outputs(self.meta)
        if isinstance(size, int) and size != expected:
            raise JianmuError(
                f"{self.path}: refused: the model outputs {size} classes but its metadata lists "
                f"{expected}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.num_classes} classes)"


def taxonomy_entries(meta: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The taxonomy records of a model's classes, looked up in its domain's taxonomy."""
    classes = meta["classes"]
    species = meta.get("species") or [None] * len(classes)
    domain = (meta.get("taxonomy") or {}).get("domain")
    return load_taxonomy(domain).entries(species) if domain else [None] * len(classes)


def encode_statistics(statistics: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in statistics.items()}
    return save(arrays) if arrays else b""


def set_onnx_metadata(
    proto: Any, meta: dict[str, Any], statistics: dict[str, np.ndarray], gallery: bytes = b""
) -> None:
    """Replace an ONNX bundle's metadata (``proto``: an ``onnx.ModelProto``): the JSON document,
    the open-set statistics and the reference gallery's blob (when there is one)."""
    del proto.metadata_props[:]
    document = json.dumps(meta, ensure_ascii=False, default=str)
    blob = base64.b64encode(encode_statistics(statistics)).decode("ascii")
    properties = [(META_KEY, document), (STATISTICS_KEY, blob)]
    if gallery:
        properties.append((GALLERY_KEY, base64.b64encode(gallery).decode("ascii")))
    for key, value in properties:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


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

    def _gallery_blob(self) -> bytes:
        text = self.session.get_modelmeta().custom_metadata_map.get(GALLERY_KEY, "")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise JianmuError(f"{self.path}: refused: reference gallery not base64") from None


class TorchBundle(ModelBundle):
    """A checkpoint (timm model rebuilt from its metadata) or a TorchScript bundle, run in fp32
    (no TF32 on GPUs: its 10-bit mantissa moves unknown-rule scores by 1e-4, more than a threshold
    fitted on a GPU and applied on a CPU allows)."""

    def __init__(self, path, module, meta, statistics, kind: str, device: str = "cpu") -> None:
        super().__init__(path, meta, statistics)
        import torch

        self.kind = kind
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self._torch = torch

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, path: str | Path, device: Any = "cpu") -> TorchBundle:
        """A :class:`~jianmu.models.Checkpoint` already in memory, as a bundle."""
        from jianmu.models import OutputsModule

        statistics = {name: tensor.numpy() for name, tensor in checkpoint.extras.items()}
        module = OutputsModule(checkpoint.build_model())
        return cls(path, module, checkpoint.meta, statistics, "checkpoint", device)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode(), _ieee_fp32(torch):
            images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            logits, embeddings = self.module(images.to(self.device))
        return logits.float().cpu().numpy(), embeddings.float().flatten(1).cpu().numpy()

    def _gallery_blob(self) -> bytes:
        # Read from the archive, not through torch.jit.load: only when a report asks for it.
        if self.kind != "torchscript" or not self.path.is_file():
            return b""
        return _torchscript_extra(self.path, TORCHSCRIPT_GALLERY)


@contextmanager
def _ieee_fp32(torch: Any) -> Iterator[None]:
    backends = torch.backends
    saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


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
    from jianmu.models import load_checkpoint

    return TorchBundle.from_checkpoint(load_checkpoint(path), path, device)


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


def _torchscript_extra(path: Path, name: str) -> bytes:
    """The bytes of the extra file ``name`` of a TorchScript archive (b"": none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            found = [entry for entry in archive.namelist() if entry.endswith(f"/extra/{name}")]
            return archive.read(found[0]) if found else b""
    except (OSError, zipfile.BadZipFile) as error:
        raise JianmuError(f"{path}: refused: cannot read {name} ({error})") from None


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
