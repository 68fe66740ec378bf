"""How long ``jianmu add-species`` takes on an ONNX bundle, and that torch is never imported
(issue 15: 5 species x 10 photos in <= 30 s on a 2-core CPU).

    python scripts/add_species_speed.py MODEL.onnx --photos DIR [--species 5] [--per-species 10]

Builds ``--species`` class folders named after species of the model's taxonomy that the model
lacks, each holding ``--per-species`` photos linked from ``DIR`` (real photos of the domain; their
names here are for the timing only), then runs the command in a fresh process, as a user does,
and reports the wall time (process start included), the time inside the call and the heavy
modules the process imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jianmu.bundle import load_model
from jianmu.config import IMAGE_EXTENSIONS
from jianmu.taxonomy import load_taxonomy

HEAVY = ("torch", "timm", "torchvision", "albumentations", "matplotlib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--species", type=int, default=5)
    parser.add_argument("--per-species", type=int, default=10)
    args = parser.parse_args()
    model = load_model(args.model)
    taxonomy = load_taxonomy(model.meta["taxonomy"]["domain"])
    have = set(model.species) | set(model.classes)
    names = [s.name for s in taxonomy.species if s.name not in have][: args.species]
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    needed = args.species * args.per_species
    if len(photos) < needed:
        sys.exit(f"{args.photos}: {len(photos)} photos, {needed} needed")
    with tempfile.TemporaryDirectory() as work:
        folders = []
        for i, name in enumerate(names):
            folder = Path(work) / name.replace(" ", "_")
            folder.mkdir()
            for photo in photos[i * args.per_species : (i + 1) * args.per_species]:
                (folder / photo.name).symlink_to(photo.resolve())
            folders.append(str(folder))
        out = Path(work) / "extended.onnx"
        code = (
            "import sys, json, time; from typer.testing import CliRunner; "
            "from jianmu.cli import app; t = time.perf_counter(); "
            f"r = CliRunner().invoke(app, ['add-species', {str(args.model)!r}, *{folders!r}, "
            f"'--out', {str(out)!r}]); t = time.perf_counter() - t; "
            f"print(json.dumps([r.exit_code, t, sorted(m for m in sys.modules if m in {HEAVY!r}),"
            " r.output]))"
        )
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.perf_counter() - started
        exit_code, inside, heavy, output = json.loads(run.stdout.strip().splitlines()[-1])
        classes = len(load_model(out).classes) if out.exists() else None
    print(output)
    print(
        json.dumps(
            {
                "model": str(args.model),
                "species": len(names),
                "photos": needed,
                "exit_code": exit_code,
                "wall_seconds": round(wall, 2),
                "call_seconds": round(inside, 2),
                "heavy_modules_imported": heavy,
                "classes_after": classes,
                "views": (model.meta.get("calibration") or {}).get("views", 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
