"""Measure `jianmu data check` on a large generated folder: wall time and peak memory.

    python scripts/audit_scale.py --files 100000 --classes 100 --workdir /tmp/audit-scale

Writes small JPEGs (64 px, some exact and near duplicates), audits them in a subprocess and prints
the figures. The images are generated once and reused on later runs with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def generate(root: Path, files: int, classes: int, seed: int = 0) -> None:
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{files},{classes}":
        return
    rng = np.random.default_rng(seed)
    per_class = files // classes
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = (base.astype(np.int16) + rng.integers(-90, 90, (16, 16, 3))).clip(0, 255)
            image = Image.fromarray(small.astype(np.uint8)).resize((64, 64), Image.BILINEAR)
            image.save(folder / f"img_{i:05d}.jpg", quality=85)
            if i % 500 == 1:  # an exact copy and a recompressed near copy now and then
                image.save(folder / f"img_{i:05d}_copy.jpg", quality=85)
                image.save(folder / f"img_{i:05d}_near.jpg", quality=60)
    marker.write_text(f"{files},{classes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/audit-scale"))
    args = parser.parse_args()
    root = args.workdir / "data"
    started = time.perf_counter()
    generate(root, args.files, args.classes)
    print(f"generated in {time.perf_counter() - started:.1f} s")
    out = args.workdir / "audit.json"
    command = [sys.executable, "-m", "jianmu", "data", "check", str(root), "--no-taxonomy"]
    command += ["--json", str(out), "--set", "data.min_image_side=16"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    audit = json.loads(out.read_text())
    print(
        f"audited {audit['num_files']} files in {wall:.1f} s (exit {result.returncode}), "
        f"peak RSS {peak_mb:.0f} MB, exact duplicate groups {len(audit['exact_duplicates'])}, "
        f"near duplicate groups {len(audit['near_duplicates'])}"
    )


if __name__ == "__main__":
    main()
