"""Training images/s of a run against the bare forward+backward speed of the same model.

    python scripts/train_speed.py configs/bench/wood-swfu5.yaml runs/swfu5-cv/fold1

The bare loop trains the config's model (same batch size, input size, precision, memory format,
optimizer) on random tensors already in memory; the run's figure is the median ``images_per_s``
of its ``metrics.csv`` after the first epoch. The gap is what the data pipeline costs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from jianmu.config import load_config
from jianmu.engine.runtime import autocast, resolve_amp_dtype
from jianmu.engine.train import build_stepper
from jianmu.models import build_model
from jianmu.rundir import RunDir


def bare_images_per_second(config_path: Path, num_classes: int, steps: int = 12) -> float:
    config = load_config(config_path)
    device = torch.device("cpu")
    model = build_model(config.model, num_classes).train()
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stepper = build_stepper(model, config.train, updates_per_epoch=steps)
    stepper.ema = None  # bare: forward, backward, optimizer step
    amp_dtype = resolve_amp_dtype(config.train.amp, device)
    size, batch = config.model.img_size, config.train.batch_size
    images = torch.randn(batch, 3, size, size)
    if config.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, num_classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)

    def step() -> None:
        with autocast(device, amp_dtype):
            loss = loss_fn(model(images), targets)
        stepper.step(loss, model)

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def run_images_per_second(run_dir: Path) -> float:
    with open(RunDir(run_dir).metrics, newline="") as stream:
        rows = list(csv.DictReader(stream))
    values = [float(row["images_per_s"]) for row in rows[1:]] or [float(rows[0]["images_per_s"])]
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    with open(RunDir(args.run_dir).manifest, newline="") as stream:
        num_classes = len({row["class"] for row in csv.DictReader(stream)})
    bare = bare_images_per_second(args.config, num_classes)
    real = run_images_per_second(args.run_dir)
    print(f"bare forward+backward: {bare:.1f} images/s")
    print(f"training (median epoch): {real:.1f} images/s")
    print(f"data pipeline and bookkeeping cost: {100 * (1 - real / bare):.1f}%")


if __name__ == "__main__":
    main()
