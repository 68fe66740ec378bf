#!/usr/bin/env python3
"""Regroup a flat folder of images into the jianmu layout ``DST/<class>/[<specimen>/]<image>``.

Written for the UFPR forest species databases (macroscopic and microscopic), whose file naming is
not documented in any source we could read: the class (and, if present, the specimen) is taken from
each file name with a regular expression. The default pattern assumes ``<species><nn>.<ext>``-style
names (``species_01.jpg``, ``Araucaria angustifolia 12.png``); check it with ``--dry-run`` first
and pass ``--pattern`` when your copy is named differently. Nothing is duplicated by default: files
are hard-linked (``--symlink`` or ``--copy`` otherwise). Standard library only; never imported.

Examples::

    python3 ufpr_regroup.py /data/ufpr-macro/raw /data/ufpr-macro/by-class --dry-run
    python3 ufpr_regroup.py SRC DST --pattern '^(?P<class>\\d+)_(?P<specimen>\\d+)_\\d+$'
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path

from placing import place

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
# Class = everything before the trailing number, separators trimmed.
DEFAULT_PATTERN = r"^(?P<class>.*?\D)[\s_\-.]*\d+$"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Regroup flat image files into DST/<class>/[<specimen>/]<image> by file name.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The pattern is matched against the file name without extension. It must have a "
        "named group 'class'; an optional group 'specimen' adds a specimen sub-folder.",
    )
    parser.add_argument("src", type=Path, help="folder holding the flat image files")
    parser.add_argument("dst", type=Path, help="output root (created; must not be inside SRC)")
    parser.add_argument(
        "--pattern",
        default=DEFAULT_PATTERN,
        help=f"regex on the file stem: groups class [, specimen] (default: {DEFAULT_PATTERN})",
    )
    parser.add_argument(
        "--ignore-case", action="store_true", help="match the pattern case-insensitively"
    )
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders of SRC")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--symlink", action="store_true", help="make symbolic links (absolute)")
    mode.add_argument("--copy", action="store_true", help="copy the files (uses disk space)")
    parser.add_argument(
        "--skip-unmatched",
        action="store_true",
        help="leave out images the pattern does not match instead of stopping",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    return parser.parse_args(argv)


def find_images(src: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """Image files and other files under ``src``, sorted."""
    candidates = src.rglob("*") if recursive else src.iterdir()
    images, others = [], []
    for path in sorted(candidates):
        if path.is_file():
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def clean_part(text: str) -> str:
    """A folder-safe name: separators at the ends trimmed, path separators replaced."""
    text = text.strip().strip("_-. ")
    return text.replace(os.sep, "_").replace("/", "_")


def plan_targets(
    images: list[Path], pattern: re.Pattern[str], dst: Path
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pairs (source, target) for matched images, and the unmatched images."""
    plan, unmatched = [], []
    for image in images:
        match = pattern.match(image.stem)
        class_name = clean_part(match.group("class") or "") if match else ""
        if not class_name:
            unmatched.append(image)
            continue
        target_dir = dst / class_name
        specimen = match.groupdict().get("specimen")
        if specimen and clean_part(specimen):
            target_dir = target_dir / clean_part(specimen)
        plan.append((image, target_dir / image.name))
    return plan, unmatched


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src, dst = args.src.resolve(), args.dst.resolve()
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    if dst == src or src in dst.parents or dst in src.parents:
        print("error: DST must be outside SRC (and SRC outside DST)", file=sys.stderr)
        return 2
    try:
        flags = re.IGNORECASE if args.ignore_case else 0
        pattern = re.compile(args.pattern, flags)
    except re.error as error:
        print(f"error: --pattern is not a valid regex: {error}", file=sys.stderr)
        return 2
    if "class" not in pattern.groupindex:
        print("error: --pattern needs a named group (?P<class>...)", file=sys.stderr)
        return 2

    images, others = find_images(src, args.recursive)
    if not images:
        print(f"error: no image files in {src}", file=sys.stderr)
        return 2
    plan, unmatched = plan_targets(images, pattern, dst)
    targets = Counter(target for _, target in plan)
    clashes = sorted(str(t) for t, n in targets.items() if n > 1)
    if clashes:
        print(f"error: {len(clashes)} target(s) would receive two files, e.g. {clashes[0]}")
        return 1
    if unmatched:
        print(f"{len(unmatched)} image(s) do not match the pattern, e.g.:", file=sys.stderr)
        for path in unmatched[:5]:
            print(f"  {path.name}", file=sys.stderr)
        if not args.skip_unmatched:
            print("fix --pattern, or pass --skip-unmatched to leave them out", file=sys.stderr)
            return 1
    if others:
        print(f"ignoring {len(others)} non-image file(s), e.g. {others[0].name}")

    per_class = Counter(target.relative_to(dst).parts[0] for _, target in plan)
    specimens = {target.parent for _, target in plan if len(target.relative_to(dst).parts) > 2}
    how = "copy" if args.copy else "symlink" if args.symlink else "hardlink"
    print(f"{len(plan)} image(s) -> {len(per_class)} class folder(s) in {dst} ({how})")
    if specimens:
        print(f"{len(specimens)} specimen folder(s)")
    for class_name, count in sorted(per_class.items()):
        print(f"  {count:6d}  {class_name}")
    if args.dry_run:
        for source, target in plan[:10]:
            print(f"  {source.name} -> {target.relative_to(dst)}")
        print("dry run: nothing written")
        return 0

    written = 0
    for source, target in plan:
        try:
            written += place(source, target, how)
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"done: {written} written, {len(plan) - written} already in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
