"""Model-only speed and accuracy of each backend for one trained model (issue 5's benchmark).

    python scripts/export_speed.py RUN --data ROOT [--manifest CSV] [--batch 32] [--seconds 10]

Exports RUN to ONNX fp32 and int8 (parity-checked, beside the checkpoint unless they exist),
then, on the manifest's test split preprocessed once (so decoding is not timed), measures
images/s at a fixed batch size and the top-1 accuracy of:
PyTorch fp32 eager, PyTorch bf16 autocast + channels_last, onnxruntime fp32, onnxruntime int8.
Prints a markdown table; ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from jianmu.bundle import load_model
from jianmu.config import load_config
from jianmu.data.preprocess import load_preprocessed
from jianmu.data.samples import class_index
from jianmu.data.split import read_manifest
from jianmu.engine.bench import fill_batch, images_per_second
from jianmu.engine.export import export
from jianmu.models import OutputsModule, load_checkpoint
from jianmu.rundir import RunDir, run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder or checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--manifest", type=Path, help="default: the run's manifest.csv")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed per backend")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    run = RunDir(run_folder(args.run))
    manifest = args.manifest or run.manifest
    checkpoint = load_checkpoint(args.run)
    index = class_index(checkpoint.classes)
    rows = [r for r in read_manifest(manifest, root=args.data) if r.split == args.split]
    spec = checkpoint.preprocessing
    images = np.stack([load_preprocessed(args.data / r.path, spec)[0] for r in rows])
    targets = np.array([index[r.label] for r in rows])

    bundles = {}
    for name, int8 in (("onnx", False), ("onnx-int8", True)):
        path = run.bundle("onnx", int8)
        if not path.exists():
            config = load_config(
                out=path, data__root=args.data, data__manifest=manifest, export__int8=int8
            )
            export(config, args.run)
        bundles[name] = load_model(path)

    module = OutputsModule(checkpoint.build_model()).eval()
    fast = OutputsModule(checkpoint.build_model()).eval().to(memory_format=torch.channels_last)

    def torch_fp32(batch):
        with torch.inference_mode():
            return module(torch.from_numpy(batch))[0].numpy()

    def torch_bf16(batch):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            images = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return fast(images)[0].float().numpy()

    backends = {
        "PyTorch fp32 eager": torch_fp32,
        "PyTorch bf16 + channels_last": torch_bf16,
        "onnxruntime fp32": lambda batch: bundles["onnx"].forward(batch)[0],
        "onnxruntime int8 (static QDQ)": lambda batch: bundles["onnx-int8"].forward(batch)[0],
    }
    batch = fill_batch(images, args.batch)
    results = []
    for name, run in backends.items():
        steps = range(0, len(images), args.batch)
        logits = np.concatenate([run(images[i : i + args.batch]) for i in steps])
        top1 = float((logits.argmax(1) == targets).mean())
        speed = images_per_second(run, batch, args.seconds)
        results.append({"backend": name, "images_per_s": speed, "top1": top1})
        print(f"{name}: {speed:.1f} images/s, top-1 {top1:.4f}", flush=True)

    reference = results[0]["images_per_s"]
    print(
        f"\n{checkpoint.meta['model_name']} at {spec.input_size} px, batch {args.batch}, "
        f"{len(rows)} {args.split} images, {os.cpu_count()} CPU threads "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}\n"
    )
    print("| backend | images/s | vs PyTorch fp32 | top-1 |\n|---|---|---|---|")
    for row in results:
        speed, ratio = row["images_per_s"], row["images_per_s"] / reference
        print(f"| {row['backend']} | {speed:.1f} | {ratio:.2f}x | {row['top1']:.4f} |")
    if args.json:
        document = {"model": checkpoint.meta["model_name"], "input_size": spec.input_size,
                    "batch": args.batch, "images": len(rows), "results": results}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
