"""``jianmu train``: classes -> model -> transforms -> loaders -> optimizer/scheduler -> epochs ->
calibration -> test figures. The run folder's layout is :class:`jianmu.rundir.RunDir`.

The epochs run the live module over DataLoader batches (augmented for training, the one eval
preprocessing for validation). Once the epochs are done, the best checkpoint is calibrated and
tested through :meth:`jianmu.bundle.ModelBundle.run`, the runner every later use of it shares.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

import jianmu
from jianmu.bundle import TorchBundle
from jianmu.calibration.fit import calibrate, read_rank_thresholds
from jianmu.config import Config, TrainConfig, load_config, save_config
from jianmu.data.dataset import (
    EpochSampler,
    ImageDataset,
    PreprocessTransform,
    class_balanced_weights,
)
from jianmu.data.preprocess import decode_size
from jianmu.data.quality import fit_quality
from jianmu.data.spec import TransformSpec
from jianmu.data.split import write_manifest
from jianmu.data.transforms import build_train_transform
from jianmu.engine.runtime import (
    Runtime,
    autocast,
    init_runtime,
    resolve_amp_dtype,
    rng_state,
    seed_everything,
    set_rng_state,
    use_deterministic,
)
from jianmu.engine.splits import DataSplits, load_splits
from jianmu.engine.tracking import Trackers, check_loggers, open_trackers
from jianmu.errors import JianmuError
from jianmu.files import atomic_write
from jianmu.metrics import macro_f1, topk_accuracy
from jianmu.models import (
    build_model,
    load_checkpoint,
    resolve_preprocessing,
    save_checkpoint,
    unwrap_model,
)
from jianmu.report.plots import plot_curves
from jianmu.rundir import ExperimentDir, RunDir
from jianmu.taxonomy import class_hierarchy, load_taxonomy

MONITOR_MODE = {"val_top1": max, "val_macro_f1": max, "val_loss": min}


class TrainReporter(Protocol):
    """What the CLI shows while training (a rich progress bar, or one line per epoch)."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def batch(self, loss: float, accuracy: float, images_per_second: float) -> None: ...
    def end_epoch(self, row: dict[str, Any]) -> None: ...


class SilentReporter:
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch(self, loss: float, accuracy: float, images_per_second: float) -> None:
        pass

    def end_epoch(self, row: dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    classes: list[str]
    best_epoch: int
    best_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    history: list[dict[str, Any]]
    stopped_early: bool
    wall_seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        return RunDir(self.run_dir).best


@dataclass
class Stepper:
    """One optimisation step: backward, clip, step, schedule, EMA (EMA and clipping optional)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEmaV3 | None = None
    grad_clip: float | None = None
    num_updates: int = 0

    def step(self, loss: torch.Tensor, model: nn.Module) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)
        if self.ema is not None:
            self.ema.update(unwrap_model(model), step=self.num_updates)


def train(
    config: Config, resume: str | Path | None = None, reporter: TrainReporter | None = None
) -> TrainResult:
    """Train a classifier as ``config`` says (or continue the run in ``resume``)."""
    started = time.perf_counter()
    reporter = reporter or SilentReporter()
    runtime = init_runtime()
    if resume is not None:
        if not RunDir(resume).can_resume():
            missing = RunDir(resume).state.name
            raise JianmuError(f"{resume}: nothing to resume (no {missing} from a jianmu run)")
        config = load_config(RunDir(resume).config)
    check_loggers(config.train.loggers)  # a missing library fails here, before anything is written
    transferred = open_set_thresholds(config)  # so does a missing open-set experiment
    use_deterministic(config.train.deterministic)
    seed_everything(config.seed)
    splits = load_splits(config)  # bad data fails here, before a run folder is made
    run = _prepare_run_dir(config, resume, runtime)
    if runtime.is_main and resume is None:
        write_manifest(run.manifest, splits.rows)
    model = build_model(config.model, len(splits.classes)).to(runtime.device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocessing = resolve_preprocessing(model, config.model)
    loaders = build_loaders(splits, preprocessing, config, runtime)
    stepper = build_stepper(model, config.train, updates_per_epoch=len(loaders["train"]))
    loss_fn, mixup = build_loss(config.train, splits, runtime.device)
    amp_dtype = resolve_amp_dtype(config.train.amp, runtime.device)
    meta = _checkpoint_meta(config, splits, preprocessing)
    history = _restore(run.state, splits, model, stepper) if resume is not None else []
    trained = _wrap_ddp(model, runtime)
    best = _best_row(history, config.train.monitor)
    earlier_s = history[-1]["time_s"] if history else 0.0  # time_s counts across resumes
    trackers = open_trackers(config, run, resume is not None) if runtime.is_main else Trackers()
    with trackers:  # an MLflow run of a failed training ends FAILED, not "running"
        for epoch in range(len(history), config.train.epochs):
            seed_everything(config.seed * 1000 + epoch * 10 + runtime.rank)
            loaders["train"].sampler.set_epoch(epoch)
            if runtime.distributed and epoch == 0:
                _record_shard(run, loaders["train"].sampler, runtime)
            reporter.start_epoch(epoch, config.train.epochs, len(loaders["train"]))
            row = train_one_epoch(
                trained, loaders["train"], stepper, loss_fn, runtime.device, amp_dtype, mixup,
                reporter,
            )  # fmt: skip
            row = {"epoch": epoch + 1, **row, "lr": stepper.optimizer.param_groups[0]["lr"]}
            weights = _validate(model, stepper.ema, loaders["val"], runtime.device, amp_dtype, row)
            row["time_s"] = round(earlier_s + time.perf_counter() - started, 2)
            history.append(row)
            if best is None or _better(row, best, config.train.monitor):
                best = row
                if runtime.is_main:
                    save_checkpoint(run.best, weights, {**meta, **_summary(row)})
            if runtime.is_main:
                _save_last(run, model, weights, stepper, history, meta)
            trackers.log_epoch(row)
            reporter.end_epoch(row)
            if _should_stop(history, best, config.train.early_stopping_patience):
                break
        _barrier(runtime)
        test_metrics = None
        if runtime.is_main:
            bundle = calibrate_best(run, splits, config, runtime.device, transferred)
            test_metrics = _test_best(run, bundle, splits.items["test"])
            plot_curves(history, run.curves)
        trackers.log_end(run, {**(test_metrics or {}), "best_epoch": best["epoch"]}, best["epoch"])
    stopped = len(history) < config.train.epochs
    return TrainResult(
        run.path, splits.classes, best["epoch"], _summary(best), test_metrics, history,
        stopped, time.perf_counter() - started, splits.warnings + trackers.warnings,
    )  # fmt: skip


def calibrate_best(
    run: RunDir,
    splits: DataSplits,
    config: Config,
    device: torch.device | str = "cpu",
    transferred: dict[str, Any] | None = None,
) -> TorchBundle:
    """Fit the best checkpoint's calibration (:func:`jianmu.calibration.fit.calibrate`, with the
    rank thresholds ``transferred`` from an open-set experiment where given) on the run's own
    training and validation images, and the photo-quality bounds on the measures of the same
    training photos (:func:`jianmu.data.quality.fit_quality`); store both in the checkpoint."""
    checkpoint = load_checkpoint(run.best)
    bundle = TorchBundle.from_checkpoint(checkpoint, run.best, device)
    hierarchy = bundle.calibrator.ranks.hierarchy
    outputs = partial(
        bundle.run,
        batch_size=config.calibration.batch_size,
        read_timeout=config.data.read_timeout,
    )
    fitted = calibrate(
        outputs,
        splits.items,
        config.calibration,
        config.seed,
        hierarchy,
        transferred,
        tta_views=bundle.tta_views,
    )
    extras = {name: torch.from_numpy(a) for name, a in fitted.statistics.to_arrays().items()}
    record = {**fitted.record, "quality": fit_quality(fitted.train_quality, config.quality)}
    save_checkpoint(run.best, checkpoint.state_dict, {**checkpoint.meta, **record}, extras)
    return bundle


def open_set_thresholds(config: Config) -> dict[str, Any] | None:
    """The rank thresholds ``calibration.open_set`` names (an experiment folder of ``jianmu eval
    --open-set``, or its ``rank-thresholds.json``), or None."""
    source = config.calibration.open_set
    if source is None:
        return None
    file = ExperimentDir(source).rank_thresholds if Path(source).is_dir() else Path(source)
    settings = config.calibration
    return read_rank_thresholds(file, settings.rule, settings.max_wrong_rate)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    stepper: Stepper,
    loss_fn: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    mixup: Any = None,
    reporter: TrainReporter | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy and images/s."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True, memory_format=_memory_format(model))
        targets = targets.to(device, non_blocking=True)
        soft_targets = mixup(images, targets) if mixup is not None else (images, targets)
        images, soft_targets = soft_targets
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, soft_targets)
        stepper.step(loss, model)
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        elapsed = time.perf_counter() - started
        if reporter is not None:
            reporter.batch(total_loss / seen, correct / seen, seen / max(elapsed, 1e-9))
    elapsed = time.perf_counter() - started
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "images_per_s": seen / max(elapsed, 1e-9),
    }


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and targets for every item of ``loader``, in order."""
    model.eval()
    logits, targets = [], []
    for images, labels in loader:
        images = images.to(device, memory_format=_memory_format(model))
        with autocast(device, amp_dtype):
            output = model(images)
        logits.append(output.float().cpu())
        targets.append(labels)
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def score_logits(logits: np.ndarray, targets: np.ndarray, prefix: str) -> dict[str, float]:
    """Loss, top-1/top-5 accuracy and macro-F1 of ``logits`` against ``targets``."""
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_top1": topk_accuracy(logits, targets, 1),
        f"{prefix}_top5": topk_accuracy(logits, targets, 5),
        f"{prefix}_macro_f1": macro_f1(logits.argmax(1), targets),
    }


# --- building blocks -----------------------------------------------------------------------------


def build_loaders(
    splits: DataSplits, preprocessing: TransformSpec, config: Config, runtime: Runtime
) -> dict[str, DataLoader]:
    """Train loader (augmented, shuffled or class-balanced, sharded per rank) and the validation
    loader (the one eval preprocessing)."""
    size, mean, std = preprocessing.input_size, preprocessing.mean, preprocessing.std
    interpolation = preprocessing.interpolation
    train_transform = build_train_transform(config.augment, size, mean, std, interpolation)
    eval_transform = PreprocessTransform(preprocessing)
    decode = decode_size(preprocessing)
    train_items = splits.items["train"]
    weights = None
    if config.train.imbalance == "sampler":
        weights = class_balanced_weights([label for _, label in train_items])
    sampler = EpochSampler(
        len(train_items), config.seed, True, weights, runtime.rank, runtime.world_size
    )
    batch_size = config.train.batch_size
    if (config.train.mixup or config.train.cutmix) and batch_size % 2:
        raise JianmuError("train.mixup/cutmix need an even train.batch_size")
    common = {
        "num_workers": config.train.workers,
        "persistent_workers": config.train.workers > 0,
        "pin_memory": runtime.device.type == "cuda",
        "worker_init_fn": _init_worker,
    }
    cache = config.data.cache_images
    train_set = ImageDataset(train_items, train_transform, decode, config.seed, cache)
    loaders = {
        "train": DataLoader(
            train_set, batch_size, sampler=sampler, drop_last=len(sampler) > batch_size, **common
        )
    }
    val = ImageDataset(splits.items["val"], eval_transform, decode, cache=cache)
    loaders["val"] = DataLoader(val, config.eval.batch_size, **common)
    return loaders


def build_stepper(model: nn.Module, config: TrainConfig, updates_per_epoch: int) -> Stepper:
    optimizer = create_optimizer_v2(
        model,
        opt=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
    )
    scheduler = None
    if config.scheduler != "none":
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=config.scheduler,
            num_epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            warmup_lr=config.lr * 0.01,
            min_lr=config.min_lr,
            decay_epochs=max(1, config.epochs // 3),
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema else None
    return Stepper(optimizer, scheduler, ema, config.grad_clip)


def build_loss(config: TrainConfig, splits: DataSplits, device: torch.device):
    """Cross-entropy (soft targets when mixing), label smoothing, optional class weights."""
    weight = None
    if config.imbalance == "loss":
        counts = torch.tensor(splits.class_counts("train"), dtype=torch.float)
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing,
            num_classes=len(splits.classes),
        )
        return nn.CrossEntropyLoss(weight=weight), mixup
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing), None


# --- run folder, checkpoints, resume -------------------------------------------------------------


def _prepare_run_dir(config: Config, resume: str | Path | None, runtime: Runtime) -> RunDir:
    if resume is not None:
        return RunDir(resume)
    run = RunDir(config.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    if run.holds_run():
        raise JianmuError(
            f"{run.path} already holds a run; continue it with --resume {run.path} or choose --out"
        )
    if runtime.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(config.model_copy(update={"out": run.path}), run.config)
    _barrier(runtime)
    return run


def _checkpoint_meta(
    config: Config, splits: DataSplits, preprocessing: TransformSpec
) -> dict[str, Any]:
    taxonomy = load_taxonomy(config.data.taxonomy or config.data.domain)
    return {
        "model_name": config.model.name,
        "classes": splits.classes,
        "species": splits.species,
        "taxonomy": {"domain": taxonomy.domain, "version": taxonomy.version},
        "hierarchy": class_hierarchy(splits.classes, taxonomy, config.data.families),
        "preprocessing": preprocessing.to_dict(),
        "manifest_sha256": splits.manifest_sha256,
        "synthetic_data": splits.synthetic,
        "config": config.model_dump(mode="json"),
        "jianmu_version": jianmu.__version__,
        "timm_version": __import__("timm").__version__,
        "torch_version": torch.__version__,
    }


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": row["epoch"], "metrics": {k: v for k, v in row.items() if k != "epoch"}}


def _save_last(run: RunDir, model, weights, stepper: Stepper, history, meta) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": stepper.optimizer.state_dict(),
        "scheduler": stepper.scheduler.state_dict() if stepper.scheduler is not None else {},
        "ema": stepper.ema.state_dict() if stepper.ema is not None else {},
        "num_updates": stepper.num_updates,
        "history": json.dumps(history),
        "classes": meta["classes"],
        "rng": rng_state(),
    }
    atomic_write(run.state, lambda tmp: torch.save(state, tmp))
    save_checkpoint(run.last, model, {**meta, **_summary(history[-1])})
    atomic_write(run.metrics, lambda tmp: tmp.write_text(_csv(history)))


def _restore(path: Path, splits: DataSplits, model, stepper: Stepper) -> list[dict[str, Any]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged state file is a user-facing problem
        raise JianmuError(f"{path}: cannot read training state ({type(error).__name__})") from None
    if list(state["classes"]) != splits.classes:
        raise JianmuError(
            f"{path}: checkpoint was trained on a different class list "
            f"({len(state['classes'])} classes) than the data ({len(splits.classes)})"
        )
    model.load_state_dict(state["model"])
    stepper.optimizer.load_state_dict(state["optimizer"])
    if stepper.scheduler is not None and state["scheduler"]:
        stepper.scheduler.load_state_dict(state["scheduler"])
    if stepper.ema is not None and state["ema"]:
        stepper.ema.load_state_dict(state["ema"])
    stepper.num_updates = int(state["num_updates"])
    set_rng_state(state["rng"])
    return json.loads(state["history"])


def _validate(model, ema, loader, device, amp_dtype, row: dict[str, Any]) -> nn.Module:
    """Score the model on validation data into ``row``. With EMA, both are scored (``model_val_*``,
    ``ema_val_*``), ``val_*`` holds the better one and ``weights`` names it; it is returned."""
    scores = score_logits(*predict_logits(model, loader, device, amp_dtype), "val")
    if ema is None:
        row.update(scores)
        return model
    ema_scores = score_logits(*predict_logits(ema.module, loader, device, amp_dtype), "val")
    row.update({f"model_{k}": v for k, v in scores.items()})
    row.update({f"ema_{k}": v for k, v in ema_scores.items()})
    use_ema = (ema_scores["val_top1"], -ema_scores["val_loss"]) > (
        scores["val_top1"],
        -scores["val_loss"],
    )
    row.update(ema_scores if use_ema else scores)
    row["weights"] = "ema" if use_ema else "model"
    return ema.module if use_ema else model


def _test_best(run: RunDir, bundle: TorchBundle, items: list) -> dict[str, float] | None:
    """The best checkpoint's figures on the test split, written to ``test_metrics.json``."""
    if not items:
        return None
    outputs = bundle.run(items).readable()
    metrics = score_logits(outputs.logits, outputs.targets, "test")
    metrics["test_images"] = len(items)
    text = json.dumps(metrics, indent=2)
    atomic_write(run.test_metrics, lambda tmp: tmp.write_text(text))
    return metrics


def _better(row: dict[str, Any], best: dict[str, Any], monitor: str) -> bool:
    """Better on the monitored metric; on a tie (small validation sets saturate accuracy), the
    lower validation loss wins."""
    if row[monitor] == best[monitor]:
        return row["val_loss"] < best["val_loss"]
    if MONITOR_MODE[monitor] is max:
        return row[monitor] > best[monitor]
    return row[monitor] < best[monitor]


def _best_row(history: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    best = None
    for row in history:
        if best is None or _better(row, best, monitor):
            best = row
    return best


def _should_stop(history, best, patience: int | None) -> bool:
    return patience is not None and history[-1]["epoch"] - best["epoch"] >= patience


def _csv(history: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _record_shard(run: RunDir, sampler: EpochSampler, runtime: Runtime) -> None:
    """Each rank notes the sample indices it trains on in epoch 1 (a DDP sanity record)."""
    indices = [index for _, index in sampler]
    text = json.dumps({"epoch": 1, "indices": indices})
    atomic_write(run.shard(runtime.rank), lambda tmp: tmp.write_text(text))


def _wrap_ddp(model: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's first convolution is, so inputs match the weights."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            if parameter.is_contiguous(memory_format=torch.channels_last):
                return torch.channels_last
            break
    return torch.contiguous_format


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)
