"""``jianmu add-species``: species added to (or removed from) a trained model without retraining.

The network stays frozen. Each new class enters through its photos' embeddings: its mean joins
the class Gaussians the unknown-species and rank rules use (the shared precision, the background
Gaussian and every threshold stay those fitted on the base model's training and validation
photos), and its probability comes from that Gaussian model, taken from the known classes in
proportion (:mod:`jianmu.calibration.extend`), so the known classes' order never changes. An
added class's score counts at every rank less its own margin (:func:`fit_species_margins`,
``extension.species_margin``).

An ONNX bundle is extended without torch (its graph is copied as is, the metadata rewritten); a
run folder or checkpoint gives a checkpoint. The new model carries its provenance (which photos
and specimens, when, from which base model and its SHA-256), and is checked before it is written:
the kept network logits must equal the base model's on the added photos.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import jianmu
from jianmu.bundle import (
    ModelBundle,
    OnnxBundle,
    TorchBundle,
    load_model,
    set_onnx_metadata,
    taxonomy_entries,
)
from jianmu.calibration.apply import calibrated_views
from jianmu.calibration.extend import ClassMap
from jianmu.calibration.scores import (
    FeatureStatistics,
    KnnModel,
    MahalanobisModel,
    l2_normalize,
    squared_distances,
)
from jianmu.config import Config
from jianmu.data.images import load_image
from jianmu.data.samples import compile_specimen_pattern, specimen_from_name, walk_files
from jianmu.errors import JianmuError, did_you_mean
from jianmu.files import atomic_write
from jianmu.gallery import THUMBNAIL_PX, Gallery, make_thumbnail, select_gallery
from jianmu.record import file_sha256, model_sha256
from jianmu.taxonomy import class_hierarchy, load_taxonomy

# The kept network logits of the extended model and of its base, on the same photos, may differ
# by no more than this (they come from the same graph on the same inputs: 0 is expected).
MAX_KEPT_LOGIT_DIFF = 1e-4
# Added photos the written model is checked on, spread over all of them (each with every view).
CHECK_PHOTOS = 16


@dataclass
class AddedClass:
    """A class folder added to the model."""

    name: str
    folder: Path
    species: str | None
    matched_via: str
    photos: list[Path]
    specimens: list[str]
    unreadable: int = 0


@dataclass
class AddSpeciesResult:
    """The extended model written, what changed, and its check."""

    path: Path
    base: Path
    form: str
    added: list[AddedClass]
    removed: list[str]
    classes: int
    check: dict[str, Any]
    seconds: float
    meta: dict[str, Any] = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def add_species(
    config: Config,
    model: str | Path,
    folders: list[str | Path] | tuple = (),
    remove: list[str] | tuple = (),
) -> AddSpeciesResult:
    """Add the class folders ``folders`` (each ``<species>/<photos>`` or
    ``<species>/<specimen>/<photos>``) to ``model`` and drop the classes ``remove``, writing the
    new model to ``config.out`` (``.onnx`` from an ONNX bundle, ``.safetensors`` from a run folder
    or checkpoint).

    Raises:
        JianmuError: nothing to do, a bad output path, a folder that is missing, empty, matches no
            species in the model's taxonomy, or is a class the model has; a class to remove that
            the model lacks; a model without class statistics; the check failed.
    """
    started = time.perf_counter()
    model = Path(model)
    if not folders and not remove:
        raise JianmuError("nothing to do: give class folders to add and/or --remove CLASS")
    bundle = load_model(model)
    out = _out_path(config, model, bundle)
    statistics = bundle.statistics
    if statistics is None or statistics.mahalanobis is None:
        raise JianmuError(
            f"{model}: refused: the model has no class statistics (trained before jianmu kept "
            f"them); retrain it to add species"
        )
    taxonomy = load_taxonomy(config.data.taxonomy or _domain(bundle))
    added = [_class_folder(Path(f), taxonomy, config) for f in folders]
    _refuse_clashes(added, bundle)
    kept = _kept_positions(bundle, remove)
    base_map = bundle.class_map or ClassMap(bundle.num_classes, tuple(range(bundle.num_classes)), 0)
    network = [p for p in kept if p < len(base_map.keep)]
    old_added = [p for p in kept if p >= len(base_map.keep)]
    order = network + old_added
    if len(order) + len(added) < 2:
        raise JianmuError("the new model would have fewer than 2 classes")
    views = calibrated_views(bundle.meta)
    outputs = _added_outputs(bundle, added, len(order), views)
    means = np.vstack(
        [statistics.mahalanobis.means[order]]
        + [
            outputs.embeddings[outputs.targets == len(order) + i].mean(0, dtype=np.float64)[None]
            for i in range(len(added))
        ]
    )
    knn = statistics.knn
    if knn is not None:
        knn = KnnModel(np.vstack([knn.embeddings, l2_normalize(outputs.embeddings)]))
    new_statistics = FeatureStatistics(
        MahalanobisModel(means, statistics.mahalanobis.precision), statistics.background, knn
    ).as_stored()
    class_map = ClassMap(
        base_map.outputs, tuple(base_map.keep[p] for p in network), len(old_added) + len(added)
    )
    removed = [bundle.classes[p] for p in range(bundle.num_classes) if p not in kept]
    meta = _extended_meta(bundle, model, order, added, removed, class_map, taxonomy, views)
    earlier = (bundle.extended or {}).get("species_margin") or [None] * base_map.added
    margins = [earlier[p - len(base_map.keep)] for p in old_added]
    margins += fit_species_margins(bundle, outputs, means[len(order) :], len(order), added)
    meta["extension"]["species_margin"] = margins
    gallery = _gallery(bundle, order, added, outputs, config)
    blob = gallery.to_blob() if gallery is not None else b""
    if gallery is not None:
        meta["gallery"] = {**gallery.describe(), "bytes": len(blob)}
    arrays = new_statistics.to_arrays(keep_knn=knn is not None)
    extended, write = _extended_form(bundle, model, out, meta, arrays, blob)
    check = _check(bundle, extended, outputs, order, len(network), added, views)
    meta["extension"]["history"][-1]["check"] = check
    write(meta)
    warnings = [
        f"{c.name}: {c.unreadable} photo(s) could not be read and were left out"
        for c in added
        if c.unreadable
    ]
    if bundle.meta.get("test_metrics") or bundle.meta.get("metrics"):
        warnings.append("the model's stored test figures are the base model's: evaluate it again")
    return AddSpeciesResult(
        out, model, bundle.kind, added, removed, len(meta["classes"]), check,
        time.perf_counter() - started, meta, warnings,
    )  # fmt: skip


# --- inputs ---------------------------------------------------------------------------------------


def _out_path(config: Config, model: Path, bundle: ModelBundle) -> Path:
    if config.out is None:
        raise JianmuError("give --out NEW_MODEL (the base model is never changed)")
    out = Path(config.out)
    suffix = ".onnx" if bundle.kind == "onnx" else ".safetensors"
    if bundle.kind == "torchscript":
        raise JianmuError(
            f"{model}: species cannot be added to a TorchScript bundle; use the ONNX bundle or "
            f"the run folder"
        )
    if out.suffix != suffix:
        raise JianmuError(f"--out {out}: a {bundle.kind} model extends to a {suffix} file")
    base_file = model if model.is_file() else None
    if base_file is not None and out.exists() and out.resolve() == base_file.resolve():
        raise JianmuError(f"--out {out} is the base model: write the new model to another file")
    if model.is_dir() and out.resolve().parent == model.resolve():
        raise JianmuError(f"--out {out}: write the new model outside the run folder {model}")
    return out


def _domain(bundle: ModelBundle) -> str:
    domain = (bundle.meta.get("taxonomy") or {}).get("domain")
    if not domain:
        raise JianmuError(f"{bundle.path}: the model names no taxonomy; give --set data.taxonomy=")
    return domain


def _class_folder(folder: Path, taxonomy, config: Config) -> AddedClass:
    """A class folder's photos and specimens, its name matched through the taxonomy."""
    if not folder.is_dir():
        raise JianmuError(f"class folder not found: {folder}")
    match = taxonomy.match(folder.name)
    if match.entry is None:
        raise JianmuError(f"{folder}: {match.describe()}; name the folder after the species")
    suffixes = {extension.lower() for extension in config.data.extensions}
    pattern = compile_specimen_pattern(config.data.specimen_pattern)
    photos, specimens = [], []
    for relative in walk_files(folder):
        if relative.suffix.lower() in suffixes:
            photos.append(folder / relative)
            specimen = specimen_from_name(relative, pattern) or relative.as_posix()
            specimens.append(f"{folder.name}/{specimen}")
    if not photos:
        raise JianmuError(f"{folder}: no photos ({', '.join(sorted(suffixes))})")
    return AddedClass(folder.name, folder, match.entry.name, match.via, photos, specimens)


def _refuse_clashes(added: list[AddedClass], bundle: ModelBundle) -> None:
    have = {name.casefold(): name for name in bundle.classes}
    have |= {species.casefold(): species for species in bundle.species if species}
    seen: dict[str, str] = {}
    for each in added:
        for key in (each.name.casefold(), (each.species or "").casefold()):
            if key and key in have:
                raise JianmuError(
                    f"{each.folder}: the model already has {have[key]!r}; remove it first "
                    f"(--remove) to replace it"
                )
        if each.species in seen:
            raise JianmuError(
                f"{each.folder} and {seen[each.species]} are the same species ({each.species})"
            )
        seen[each.species] = str(each.folder)


def _kept_positions(bundle: ModelBundle, remove) -> list[int]:
    classes = bundle.classes
    unknown = [name for name in remove if name not in classes]
    if unknown:
        raise JianmuError(
            f"--remove {unknown[0]!r}: not a class of the model" + did_you_mean(unknown[0], classes)
        )
    if remove and bundle.statistics is not None and bundle.statistics.knn is not None:
        raise JianmuError(
            "--remove: this model's unknown-species rule (knn) keeps training embeddings without "
            "their classes, so a class cannot be taken out of it; retrain without the class"
        )
    return [p for p, name in enumerate(classes) if name not in set(remove)]


def _added_outputs(bundle: ModelBundle, added: list[AddedClass], first: int, views: int):
    """The base model's outputs on the readable photos of the added classes (targets: their new
    class indices); each class keeps the photos and specimens that could be read."""
    items = [(photo, first + i) for i, each in enumerate(added) for photo in each.photos]
    if not items:
        return _no_outputs(bundle)
    outputs = bundle.run(items, views)
    position = 0
    for each in added:
        good = outputs.ok[position : position + len(each.photos)]
        position += len(each.photos)
        each.unreadable = int((~good).sum())
        if not good.any():
            raise JianmuError(f"{each.folder}: none of its {len(each.photos)} photos could be read")
        each.photos = [p for p, ok in zip(each.photos, good, strict=True) if ok]
        each.specimens = [s for s, ok in zip(each.specimens, good, strict=True) if ok]
    return outputs.readable()


def _no_outputs(bundle: ModelBundle):
    from jianmu.outputs import Outputs

    return Outputs(
        np.zeros((0, bundle.num_classes), np.float32),
        np.zeros((0, bundle.statistics.mahalanobis.means.shape[1]), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, bool),
    )


def fit_species_margins(
    bundle, outputs, means: np.ndarray, first: int, added
) -> list[float | None]:
    """What each added class's score counts for less at every rank (so how far above a rank's
    threshold it must be to answer there): by leave-one-specimen-out, the median of how much
    closer a photo is to its class mean with its own specimen in it than without (the flattery
    of a mean fitted on a handful of specimens, which a class trained on hundreds of photos and
    calibrated on validation photos does not have). None (its score never counts) for a class
    of one specimen; 0 for rules without class distances (``msp``)."""
    rule = (bundle.meta.get("unknown") or {}).get("rule")
    if rule not in ("mahalanobis", "relative_mahalanobis"):
        return [0.0 for _ in added]
    precision = bundle.statistics.mahalanobis.precision
    margins: list[float | None] = []
    for i, each in enumerate(added):
        rows = np.flatnonzero(outputs.targets == first + i)
        specimens = np.asarray(each.specimens)
        if len(set(each.specimens)) < 2:
            margins.append(None)
            continue
        flattery = []
        for specimen in sorted(set(each.specimens)):
            held = specimens == specimen
            without = outputs.embeddings[rows[~held]].mean(0, dtype=np.float64)
            photos = outputs.embeddings[rows[held]]
            near = squared_distances(MahalanobisModel(means[i][None], precision), photos)
            far = squared_distances(MahalanobisModel(without[None], precision), photos)
            flattery += list(np.sqrt(far[:, 0]) - np.sqrt(near[:, 0]))
        margins.append(round(max(float(np.median(flattery)), 0.0), 4))
    return margins


# --- the new model --------------------------------------------------------------------------------


def _extended_meta(bundle, model, order, added, removed, class_map, taxonomy, views) -> dict:
    meta = dict(bundle.meta)
    classes = [bundle.classes[p] for p in order] + [each.name for each in added]
    species = [bundle.species[p] for p in order] + [each.species for each in added]
    families = ((meta.get("config") or {}).get("data") or {}).get("families")
    meta |= {"classes": classes, "species": species}
    meta["hierarchy"] = class_hierarchy(classes, taxonomy, families)
    meta["taxonomy_entries"] = taxonomy_entries(meta)
    history = list((bundle.extended or {}).get("history", []))
    history.append(
        {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "jianmu_version": jianmu.__version__,
            "base": {
                "path": str(model),
                "sha256": model_sha256(model),
                "format": bundle.kind,
                "classes": bundle.num_classes,
            },
            "added": [_provenance(each) for each in added],
            "removed": removed,
            "views": views,
            "method": "class mean of the frozen embeddings with the base model's shared "
            "precision; thresholds are the base model's",
        }
    )
    meta["extension"] = {**class_map.to_dict(), "history": history}
    return meta


def _provenance(each: AddedClass) -> dict[str, Any]:
    return {
        "class": each.name,
        "species": each.species,
        "matched_via": each.matched_via,
        "folder": str(each.folder),
        "photos": len(each.photos),
        "specimens": len(set(each.specimens)),
        "unreadable": each.unreadable,
        "files": [
            {"path": str(photo), "sha256": file_sha256(photo), "specimen": specimen}
            for photo, specimen in zip(each.photos, each.specimens, strict=True)
        ],
    }


def _gallery(bundle, order, added, outputs, config: Config) -> Gallery | None:
    """The base model's reference photos of the kept classes (renumbered), and as many of each
    added class's own photos."""
    base = bundle.gallery
    if base is None:
        return None
    renumber = {old: new for new, old in enumerate(order)}
    rows = [i for i, c in enumerate(base.classes) if int(c) in renumber]
    embeddings = [base.embeddings[rows].astype(np.float32)]
    classes = [int(renumber[int(base.classes[i])]) for i in rows]
    jpegs = [base.jpegs[i] for i in rows]
    sources = [base.sources[i] for i in rows]
    if added:
        chosen = select_gallery(outputs.embeddings, outputs.targets, base.per_class)
        paths = [photo for each in added for photo in each.photos]
        for row in chosen:
            embeddings.append(outputs.embeddings[row][None].astype(np.float32))
            classes.append(int(outputs.targets[row]))
            jpegs.append(
                make_thumbnail(load_image(paths[row], THUMBNAIL_PX, config.data.read_timeout))
            )
            sources.append(f"added: {paths[row].parent.name}/{paths[row].name}")
    licence = base.licence
    if added:
        licence += "; added species: the lab's own photos given to jianmu add-species"
    return Gallery(np.vstack(embeddings), classes, jpegs, sources, licence, base.thumbnail_px,
                   base.per_class)  # fmt: skip


def _extended_form(bundle, model: Path, out: Path, meta, arrays, blob: bytes):
    """The extended model in memory (``blob``: its reference gallery, b"" for none), and the
    function that writes it with its final metadata."""
    if bundle.kind == "onnx":
        import onnx

        proto = onnx.load(str(model))
        set_onnx_metadata(proto, meta, arrays, blob)
        extended = OnnxBundle(out, model=proto.SerializeToString())

        def write(final: dict[str, Any]) -> None:
            set_onnx_metadata(proto, final, arrays, blob)
            atomic_write(out, lambda tmp: tmp.write_bytes(proto.SerializeToString()))

        return extended, write
    import torch

    from jianmu.models import Checkpoint, load_checkpoint, save_checkpoint

    base = load_checkpoint(model)
    extras = {
        name: tensor for name, tensor in base.extras.items() if not name.startswith("openset.")
    }
    extras |= {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}
    checkpoint = Checkpoint(base.state_dict, meta, extras)
    extended = TorchBundle.from_checkpoint(checkpoint, out)

    def write(final: dict[str, Any]) -> None:
        save_checkpoint(out, base.state_dict, final, extras)

    return extended, write


def _check(bundle, extended, outputs, order, kept_network, added, views) -> dict[str, Any]:
    """The extended model against its base on up to :data:`CHECK_PHOTOS` of the added photos:
    the kept network logits equal, the known classes in the same order, and how many of them
    come out as their class.

    Raises:
        JianmuError: the kept logits differ (nothing is written).
    """
    if not added:
        return {"photos": 0}
    photos = [photo for each in added for photo in each.photos]
    rows = np.unique(np.linspace(0, len(photos) - 1, min(len(photos), CHECK_PHOTOS)).astype(int))
    new = extended.run([(photos[row], -1) for row in rows], views)
    outputs = outputs.subset(np.isin(np.arange(len(photos)), rows))
    base_logits = outputs.logits[:, order[:kept_network]]
    difference = float(np.abs(new.logits[:, :kept_network] - base_logits).max(initial=0.0))
    if difference > MAX_KEPT_LOGIT_DIFF:
        raise JianmuError(
            f"check failed: the extended model's kept logits differ from the base model's by "
            f"{difference:.3g} (> {MAX_KEPT_LOGIT_DIFF}); nothing written"
        )
    known = len(order)
    old_order = np.argsort(-outputs.logits[:, order], axis=1, kind="stable")
    new_order = np.argsort(-new.logits[:, :known], axis=1, kind="stable")
    top = new.logits.argmax(1)
    return {
        "photos": len(rows),
        "kept_max_abs_logit_diff": difference,
        "known_order_agreement": float(np.mean(np.all(old_order == new_order, axis=1))),
        "added_top1_on_given_photos": float(np.mean(top == outputs.targets)),
    }
