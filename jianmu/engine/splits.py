"""From a config to train/val/test items: a given manifest, or a leak-free split made on the fly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from jianmu.config import Config
from jianmu.data.samples import find_samples, natural_key
from jianmu.data.split import ManifestRow, manifest_items, read_manifest, split_samples
from jianmu.data.synth import is_synthetic_set
from jianmu.errors import JianmuError
from jianmu.taxonomy import load_taxonomy


@dataclass
class DataSplits:
    root: Path
    classes: list[str]
    species: list[str | None]
    items: dict[str, list[tuple[Path, int]]]
    manifest_sha256: str
    synthetic: bool = False
    rows: list[ManifestRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def class_counts(self, split: str) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.items.get(split, []):
            counts[label] += 1
        return counts


def load_splits(config: Config) -> DataSplits:
    """Read ``data.manifest`` or split ``data.root`` (grouped, stratified, seeded); check the
    result can train: at least two classes, and every class in train and val."""
    root = data_root(config)
    if config.data.manifest is not None:
        rows = read_manifest(config.data.manifest, root=root)
    else:
        samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
        rows = split_samples(samples, None, config.data, seed=config.seed, root=root).rows
    if not rows:
        raise JianmuError(f"{root}: no readable images to train on")
    classes = sorted({row.label for row in rows}, key=natural_key)
    if len(classes) < 2:
        raise JianmuError(f"{root}: training needs at least 2 classes, found {len(classes)}")
    splits = DataSplits(
        root, classes, _species(config, classes), manifest_items(rows, root, classes),
        _manifest_hash(rows),
        synthetic=is_synthetic_set(root), rows=rows,
    )  # fmt: skip
    for split in ("train", "val"):
        empty = [c for c, n in zip(classes, splits.class_counts(split), strict=True) if n == 0]
        if empty:
            raise JianmuError(
                f"class {empty[0]!r} has no {split} images"
                + (f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else "")
                + "; add images or change data.val_fraction / the manifest"
            )
    unmatched = [c for c, s in zip(classes, splits.species, strict=True) if s is None]
    if unmatched:
        splits.warnings.append(
            f"{len(unmatched)} class folder(s) not in the {config.data.domain} taxonomy: "
            + ", ".join(unmatched[:5])
        )
    return splits


def data_root(config: Config) -> Path:
    """``data.root``, which the command needs.

    Raises:
        JianmuError: no data root given.
    """
    if config.data.root is None:
        raise JianmuError("no data: give --data ROOT (or data.root in the config)")
    return Path(config.data.root).expanduser()


def _species(config: Config, classes: list[str]) -> list[str | None]:
    taxonomy = load_taxonomy(config.data.taxonomy or config.data.domain)
    return [getattr(taxonomy.match(name).entry, "name", None) for name in classes]


def _manifest_hash(rows: list[ManifestRow]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path},{row.label},{row.split},{row.sha256}\n".encode())
    return digest.hexdigest()
