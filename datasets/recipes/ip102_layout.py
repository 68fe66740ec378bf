#!/usr/bin/env python3
"""Lay out the IP102 classification set as ``DST/<class>/<image>`` from its split files.

IP102 (Wu et al., CVPR 2019) ships its classification images in one folder and lists them in
``train.txt``, ``val.txt`` and ``test.txt``, one ``<file name> <label>`` per line; the class names
are in ``classes.txt`` of the GitHub repository xpwu95/IP102, numbered 1..102. A third-party audit
reports the split labels as 0..101, so the label base is detected by default (``--label-base``).

Class folders are named ``<NNN>-<name>`` (``001-rice_leaf_roller``). ``classes.txt`` lists "alfalfa
weevil" twice (45 and 57); a name that occurs more than once gets an ``_idNNN`` suffix, so the two
stay two classes after jianmu drops the leading number when it matches folder names.

By default the three official splits are pooled into one ROOT (let ``jianmu data split`` make a
grouped split); ``--by-split`` writes ``DST/<split>/<class>/<image>`` instead, and ``--manifest``
writes the official split as a CSV (path,class,specimen,split,sha256; specimen = file stem). Files
are hard-linked by default (``--symlink``/``--copy`` otherwise). Standard library only.

Example::

    python3 ip102_layout.py ~/data/ip102_v1.1 ~/data/ip102-by-class --classes classes.txt
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from placing import place

SPLITS = ("train", "val", "test")
_CLASS_LINE = re.compile(r"^\s*(\d+)\s+(.*?)\s*$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Lay out IP102 classification images as DST/<class>/<image>.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="folder with train.txt, val.txt, test.txt")
    parser.add_argument("dst", type=Path, help="output root (created; must not be inside SRC)")
    parser.add_argument(
        "--classes",
        type=Path,
        default=None,
        help="classes.txt from github.com/xpwu95/IP102 (default: SRC/classes.txt)",
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="image folder (default: SRC/images)"
    )
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated split files to read"
    )
    parser.add_argument(
        "--label-base",
        choices=("auto", "0", "1"),
        default="auto",
        help="first label value in the split files (auto: 0 if any label is 0)",
    )
    parser.add_argument("--by-split", action="store_true", help="write DST/<split>/<class>/<image>")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="also write the official split as CSV here"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--symlink", action="store_true", help="make symbolic links (absolute)")
    mode.add_argument("--copy", action="store_true", help="copy the files (uses disk space)")
    parser.add_argument(
        "--allow-missing", action="store_true", help="skip listed images that are not on disk"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    return parser.parse_args(argv)


def read_classes(path: Path) -> dict[int, str]:
    """``{1: 'rice leaf roller', ...}`` from IP102's classes.txt (id, spaces/tabs, name)."""
    classes: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _CLASS_LINE.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: expected '<id> <name>', got {line.strip()!r}")
        class_id, name = int(match.group(1)), " ".join(match.group(2).split())
        if class_id in classes:
            raise ValueError(f"{path}:{number}: class id {class_id} listed twice")
        classes[class_id] = name
    if not classes:
        raise ValueError(f"{path}: no classes found")
    return classes


def folder_names(classes: dict[int, str]) -> dict[int, str]:
    """Class id -> folder name; repeated names keep an id suffix to stay distinct."""
    slugs = {i: re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") for i, name in classes.items()}
    repeated = {
        s.casefold() for s, n in Counter(s.casefold() for s in slugs.values()).items() if n > 1
    }
    width = max(3, len(str(max(classes))))
    names = {}
    for class_id, slug in slugs.items():
        suffix = f"_id{class_id:0{width}d}" if slug.casefold() in repeated else ""
        names[class_id] = f"{class_id:0{width}d}-{slug}{suffix}"
    return names


def read_split(path: Path) -> list[tuple[str, int, int]]:
    """(relative image path, label, line number) for every non-empty line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<image> <label>', got {line.strip()!r}")
        rows.append((parts[0], int(parts[1]), number))
    return rows


def resolve_label_base(labels: set[int], num_classes: int, requested: str) -> int:
    if requested != "auto":
        return int(requested)
    if 0 in labels:
        return 0
    if max(labels) == num_classes:
        return 1
    raise ValueError("cannot tell whether labels start at 0 or 1; pass --label-base")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src, dst = args.src.resolve(), args.dst.resolve()
    images_dir = (args.images or src / "images").resolve()
    classes_path = args.classes or src / "classes.txt"
    if dst in (src, images_dir) or src in dst.parents or dst in images_dir.parents:
        print("error: DST must be outside SRC and the image folder", file=sys.stderr)
        return 2
    for needed in (images_dir, classes_path):
        if not needed.exists():
            print(f"error: {needed} not found", file=sys.stderr)
            return 2
    if args.manifest and args.by_split:
        print("error: --manifest describes one pooled ROOT; drop --by-split", file=sys.stderr)
        return 2
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        classes = read_classes(classes_path)
        rows = {split: read_split(src / f"{split}.txt") for split in splits}
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    labels = {label for split_rows in rows.values() for _, label, _ in split_rows}
    if not labels:
        print("error: the split files list no images", file=sys.stderr)
        return 2
    try:
        base = resolve_label_base(labels, len(classes), args.label_base)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    unknown = sorted(label for label in labels if label - base + 1 not in classes)
    if unknown:
        print(f"error: labels without a class name (base {base}): {unknown[:10]}", file=sys.stderr)
        return 1
    names = folder_names(classes)

    # One record per listed image; a file listed twice must agree with itself.
    records: dict[str, tuple[str, str]] = {}
    conflicts, repeats, missing = [], 0, []
    for split, split_rows in rows.items():
        for image, label, number in split_rows:
            folder = names[label - base + 1]
            if image in records:
                repeats += 1
                if records[image][0] != folder:
                    conflicts.append(f"{split}.txt:{number}: {image}")
                continue
            if not (images_dir / image).is_file():
                missing.append(image)
                continue
            records[image] = (folder, split)
    listed = {Path(image).as_posix() for split_rows in rows.values() for image, _, _ in split_rows}
    on_disk = {p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*") if p.is_file()}
    print(f"label base {base}; {len(classes)} classes; {len(records)} images found")
    if on_disk - listed:
        print(f"{len(on_disk - listed)} file(s) in {images_dir} are in no split file (left out)")
    for split in splits:
        print(f"  {sum(1 for _, s in records.values() if s == split):6d}  {split}")
    if repeats:
        print(f"{repeats} image(s) listed more than once (kept the first listing)")
    if conflicts:
        print(f"error: {len(conflicts)} image(s) listed with two labels, e.g. {conflicts[0]}")
        return 1
    if missing:
        print(f"{len(missing)} listed image(s) not found in {images_dir}, e.g. {missing[0]}")
        if not args.allow_missing:
            print("pass --allow-missing to skip them", file=sys.stderr)
            return 1

    plan: list[tuple[Path, Path, str, str]] = []
    for image, (folder, split) in sorted(records.items()):
        # The file name only: a sub-folder under the class folder would read as a specimen.
        name = Path(image).name
        relative = Path(split, folder, name) if args.by_split else Path(folder, name)
        plan.append((images_dir / image, dst / relative, folder, split))
    clashes = [t for t, n in Counter(target for _, target, _, _ in plan).items() if n > 1]
    if clashes:
        print(f"error: {len(clashes)} target(s) would receive two files, e.g. {clashes[0]}")
        return 1
    per_class = defaultdict(int)
    for _, _, folder, _ in plan:
        per_class[folder] += 1
    empty = [names[i] for i in sorted(names) if names[i] not in per_class]
    smallest = sorted(per_class.items(), key=lambda item: item[1])[:3]
    print(f"smallest classes: {', '.join(f'{name} ({n})' for name, n in smallest)}")
    if empty:
        print(f"{len(empty)} class(es) with no image: {', '.join(empty[:5])}")
    how = "copy" if args.copy else "symlink" if args.symlink else "hardlink"
    layout = "DST/<split>/<class>/<image>" if args.by_split else "DST/<class>/<image>"
    print(f"{len(plan)} image(s) -> {layout} in {dst} ({how})")
    if args.dry_run:
        for source, target, _, _ in plan[:5]:
            print(f"  {source.name} -> {target.relative_to(dst)}")
        print("dry run: nothing written")
        return 0

    written = 0
    for source, target, _, _ in plan:
        try:
            written += place(source, target, how)
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"done: {written} written, {len(plan) - written} already in place")

    if args.manifest:
        args.manifest.parent.mkdir(parents=True, exist_ok=True)
        with args.manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["path", "class", "specimen", "split", "sha256"])
            for source, target, folder, split in plan:
                relative = target.relative_to(dst).as_posix()
                writer.writerow([relative, folder, Path(target).stem, split, sha256_of(source)])
        print(f"official split written to {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
