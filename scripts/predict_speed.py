"""End-to-end speed and memory of ``jianmu predict`` on folders of large photos (issue 6).

    python scripts/predict_speed.py MODEL.onnx [--checkpoint RUN] [--also MODEL.torchscript]
        [--sizes 1600x1200,4000x3000] [--images 200] [--memory 200,2000] [--batch N]

Generates (seeded, in a temporary folder unless ``--work DIR``) one folder of photo-like JPEGs per
size: ``--unique`` distinct pictures (colour field, fibre texture, grain; about 3 MB per 12 MP,
as a camera writes), hard-linked up to ``--images`` names; each file costs a full decode, links or
not. Then, per model and size, prints a markdown table of:

- end-to-end images/s: :func:`jianmu.engine.predict.predict` from the folder to a written CSV,
  in a fresh process (model loading is timed apart: "load s");
- model-only images/s: the same bundle's ``predict`` on batches already preprocessed, at the same
  batch size;
- the plain loop (with ``--checkpoint``): per image PIL open + full decode + torchvision
  Resize/CenterCrop/ToTensor/Normalize + PyTorch eager fp32, batch 1.

and the peak resident memory of ``predict`` over folders of each ``--memory`` count (links to the
largest size's pictures), each in its own process, which reports its own peak (``VmHWM``; the
``ru_maxrss`` of a spawned process, and ``RUSAGE_CHILDREN``, start from the parent's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX bundle (or any model form)")
    parser.add_argument(
        "--also", type=Path, action="append", default=[], help="another form, e.g. .torchscript"
    )
    parser.add_argument("--checkpoint", type=Path, help="run folder or checkpoint: plain loop")
    parser.add_argument("--sizes", default="1600x1200,4000x3000", help="WxH,WxH")
    parser.add_argument("--images", type=int, default=200, help="photos per size folder")
    parser.add_argument("--unique", type=int, default=24, help="distinct pictures per size")
    parser.add_argument("--plain-images", type=int, default=60, help="photos the plain loop reads")
    parser.add_argument("--memory", default="200,2000", help="folder sizes for peak memory")
    parser.add_argument("--batch", type=int, help="default: predict's default for the backend")
    parser.add_argument("--workers", type=int, help="decoding threads (default: CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the generated folders here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override of the predict runs, e.g. quality.gate=false",
    )  # fmt: skip
    parser.add_argument("--child", type=Path, metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.model, args.child, args.batch, args.workers, args.set)
        return
    with tempfile.TemporaryDirectory(prefix="predict_speed_") as scratch:
        work = args.work or Path(scratch)
        _run(args, work)


def _run(args, work: Path) -> None:
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    folders = {}
    for width, height in sizes:
        folder = work / f"{width}x{height}"
        sources = make_photos(folder / "unique", min(args.unique, args.images), (width, height),
                              args.seed)  # fmt: skip
        folders[(width, height)] = link_copies(sources, folder / f"n{args.images}", args.images)
        megabytes = np.mean([p.stat().st_size for p in sources]) / 2**20
        print(f"{folder}: {args.images} photos, {megabytes:.1f} MB each on average", flush=True)
    models = [args.model, *args.also]
    rows = []
    for model in models:
        for size, folder in folders.items():
            end_to_end = _in_child(model, folder, args.batch, args.workers, args.set)
            model_only, batch = model_only_speed(model, folder, args.batch)
            plain = None
            if args.checkpoint is not None and model == args.model:
                plain = plain_loop_speed(args.checkpoint, folder, args.plain_images)
            rows.append((model, size, batch, end_to_end, model_only, plain))
            print(f"done: {model.name} {size[0]}x{size[1]}", file=sys.stderr, flush=True)
    print()
    print(f"{os.cpu_count()} CPUs; decoding threads: {args.workers or 'default'}")
    print()
    print(speed_table(rows))
    largest = max(folders)
    sources = sorted((work / f"{largest[0]}x{largest[1]}" / "unique").glob("*.jpg"))
    memory = []
    for count in [int(n) for n in args.memory.split(",")]:
        folder = link_copies(sources, work / f"memory_{largest[0]}x{largest[1]}_{count}", count)
        report = _in_child(args.model, folder, args.batch, args.workers)
        memory.append((count, report["max_rss_mib"], report["images_per_s"]))
    print()
    print(memory_table(args.model, largest, memory))
    print(f"\ntorch imported by predict with {args.model.name}: {report['torch_imported']}")


# --- photos ---------------------------------------------------------------------------------------


def make_photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``count`` photo-like JPEGs of ``size`` (width, height): a smooth colour field with a fibre-
    like texture and sensor grain, about 3 MB per 12 MP at quality 92, like a camera's files."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        path = folder / f"photo_{index:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, width, height, index])
        coarse = Image.fromarray(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
        fibres = rng.integers(104, 153, (max(1, height // 8), max(1, width // 8)), dtype=np.uint8)
        texture = Image.fromarray(fibres).resize((width, height), Image.BILINEAR)
        pixels = pixels + (np.asarray(texture, dtype=np.int16)[..., None] - 128)
        tile = rng.integers(-5, 6, (256, 256, 1), dtype=np.int16)
        pixels += np.tile(tile, (height // 256 + 1, width // 256 + 1, 3))[:height, :width]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
    return paths


def link_copies(sources: list[Path], folder: Path, count: int) -> Path:
    """``folder`` with ``count`` names, hard links to ``sources`` in turn (copies if links fail)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        target = folder / f"img_{index:05d}.jpg"
        if target.exists():
            continue
        source = sources[index % len(sources)]
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(source.read_bytes())
    return folder


# --- measurements ---------------------------------------------------------------------------------


def _in_child(
    model: Path, folder: Path, batch: int | None, workers: int | None, overrides=()
) -> dict:
    command = [sys.executable, str(HERE), str(model), "--child", str(folder)]
    command += [f"--set={override}" for override in overrides]
    if batch:
        command += ["--batch", str(batch)]
    if workers:
        command += ["--workers", str(workers)]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise SystemExit(f"child failed ({run.returncode}):\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _child(model: Path, folder: Path, batch: int | None, workers: int | None, overrides=()) -> None:
    from jianmu.bundle import load_model
    from jianmu.config import load_config
    from jianmu.engine.predict import predict

    started = time.perf_counter()
    bundle = load_model(model)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(
            None, list(overrides), out=Path(scratch) / "results.csv", predict__batch_size=batch,
            predict__workers=workers,
        )  # fmt: skip
        result = predict(config, bundle, [folder], keep_images=False)
    seconds = time.perf_counter() - loaded
    report = {
        "images": result.summary["images"],
        "failed": result.failed,
        "load_seconds": loaded - started,
        "seconds": seconds,
        "images_per_s": result.summary["images"] / seconds,
        "max_rss_mib": _peak_rss_kib() / 1024,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(report))


def _peak_rss_kib() -> float:
    """This process's peak resident memory. Linux: ``VmHWM`` (``ru_maxrss`` of a spawned process
    starts from its parent's peak, which would hide the figure); elsewhere ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def model_only_speed(model: Path, folder: Path, batch: int | None, seconds: float = 5.0):
    """Images/s of the bundle on preprocessed batches (no decoding), and the batch size used."""
    from jianmu.bundle import BATCH_SIZE, load_model
    from jianmu.data.preprocess import load_preprocessed

    bundle = load_model(model)
    batch = batch or BATCH_SIZE
    paths = sorted(folder.glob("*.jpg"))[:batch]
    images = np.stack([load_preprocessed(path, bundle.spec)[0] for path in paths])
    images = np.concatenate([images] * (batch // len(images) + 1))[:batch]
    bundle.predict(images)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        bundle.predict(images)
        done += len(images)
    return done / (time.perf_counter() - started), batch


def plain_loop_speed(checkpoint: Path, folder: Path, count: int) -> float:
    """Images/s of the naive loop: PIL full decode, torchvision transforms, eager fp32, batch 1."""
    import torch
    from torchvision import transforms

    from jianmu.models import OutputsModule, load_checkpoint

    loaded = load_checkpoint(checkpoint)
    spec = loaded.preprocessing
    module = OutputsModule(loaded.build_model()).eval()
    mode = getattr(transforms.InterpolationMode, spec.interpolation.upper(), None)
    transform = transforms.Compose([
        transforms.Resize(int(spec.input_size / spec.crop_pct),
                          interpolation=mode or transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(spec.input_size),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])  # fmt: skip
    paths = sorted(folder.glob("*.jpg"))[:count]
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as image:
                tensor = transform(image.convert("RGB"))
            module(tensor.unsqueeze(0))
    return len(paths) / (time.perf_counter() - started)


# --- tables ---------------------------------------------------------------------------------------


def speed_table(rows) -> str:
    lines = [
        "| model | photos | batch | load s | end-to-end img/s | model-only img/s "
        "| e2e / model-only | plain loop img/s | e2e / plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, (width, height), batch, child, model_only, plain in rows:
        end_to_end = child["images_per_s"]
        plain_cells = f"{plain:.1f} | {end_to_end / plain:.1f}x" if plain else "- | -"
        lines.append(
            f"| {model.name} | {width}x{height} | {batch} | {child['load_seconds']:.2f} "
            f"| {end_to_end:.1f} | {model_only:.1f} | {end_to_end / model_only:.2f} "
            f"| {plain_cells} |"
        )
    return "\n".join(lines)


def memory_table(model: Path, size: tuple[int, int], memory) -> str:
    lines = [
        "| model | photos | images | peak RSS MiB | img/s |",
        "|---|---|---:|---:|---:|",
    ]
    for count, mebibytes, speed in memory:
        lines.append(
            f"| {model.name} | {size[0]}x{size[1]} | {count} | {mebibytes:.0f} | {speed:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
