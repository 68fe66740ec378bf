"""``jianmu bench SUITE``: train, evaluate, export and predict on fixed data, record accuracy and
speed figures, and compare them with a committed baseline; a data set's ``compare_with`` model
also goes through the release gate (:mod:`jianmu.engine.compare`) against the model trained.

Absolute speeds differ between machines, so the judged speed figures are ratios to a reference
measured in the same run (end-to-end predict / model-only onnxruntime, onnxruntime / PyTorch,
draft / full JPEG decoding); the absolute images/s are recorded beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from jianmu.bundle import load_model
from jianmu.config import (
    BenchData,
    BenchSuite,
    Config,
    find_configs_dir,
    load_config,
    read_yaml,
    validate_config,
)
from jianmu.data.preprocess import load_preprocessed, preprocess
from jianmu.data.split import read_manifest
from jianmu.data.synth import generate_dataset
from jianmu.engine.baseline import (
    Comparison,
    build_tolerances,
    compare,
    comparison_markdown,
    load_baseline,
    write_baseline,
)
from jianmu.engine.compare import compare as compare_models
from jianmu.engine.compare import judge
from jianmu.engine.evaluate import evaluate
from jianmu.engine.export import export
from jianmu.engine.predict import predict
from jianmu.engine.train import train
from jianmu.errors import JianmuError
from jianmu.files import write_text_atomic
from jianmu.rundir import RunDir, bundle_name
from jianmu.verdict import RANKS, UNKNOWN_RANK

REPO = find_configs_dir().parent


class BenchSkipped(JianmuError):
    """The suite's data is not on this machine (e.g. the shared real data set)."""


@dataclass
class BenchResult:
    suite: str
    out: Path
    record: dict[str, Any]  # what bench.json holds
    comparison: Comparison
    seconds: float

    @property
    def figures(self) -> dict[str, float]:
        return self.record["figures"]


def find_suite(name_or_path: str | Path) -> Path:
    """A suite by name (``configs/bench/<name>.yaml``) or path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = find_configs_dir() / "bench" / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(
        p.stem
        for p in candidate.parent.glob("*.yaml")
        if isinstance(read_yaml(p), dict) and "tolerances" in read_yaml(p)
    )
    raise JianmuError(f"unknown bench suite {str(name_or_path)!r}; suites: {', '.join(known)}")


def load_suite(path: str | Path) -> BenchSuite:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise JianmuError(f"{path}: expected a bench suite mapping")
    suite = validate_config(raw, str(path), BenchSuite)
    build_tolerances(suite.tolerances, source=f"{path}: tolerances")  # fail early on typos
    return suite


def bench(config: Config, suite: str | Path, reporter: Any = None) -> BenchResult:
    """Run a suite (a name in ``configs/bench/`` or a YAML path); write ``bench.json`` and
    ``bench.md`` to ``out`` (default ``runs/bench/<suite>``); compare with the baseline, or
    rewrite it with ``bench.update_baseline``.

    Raises:
        BenchSkipped: a real data set of the suite is absent.
    """
    started = time.perf_counter()
    path = find_suite(suite)
    spec = load_suite(path)
    for data in spec.data:
        if data.root is not None and not _resolve(data.root).is_dir():
            raise BenchSkipped(
                f"bench {spec.name}: skipped: data set {data.root} is not on this machine"
            )
    out = Path(config.out) if config.out is not None else Path("runs") / "bench" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    gates: list[Comparison] = []
    notes: list[str] = []
    for data in spec.data:
        figures |= _run_data(spec, data, path, out / data.name, reporter, gates, notes)
    record = {
        "suite": spec.name,
        "figures": figures,
        "hardware": hardware(),
        "versions": versions(),
        "git_commit": git_commit(),
        "seeds": {"seed": spec.seed},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes,
    }
    baseline_path = _resolve(spec.baseline)
    baseline = load_baseline(baseline_path)
    tolerances = build_tolerances(spec.tolerances, source=f"{path}: tolerances")
    comparison = compare(figures, baseline and baseline["figures"], tolerances)
    comparison = Comparison(comparison.rows + [row for gate in gates for row in gate.rows])
    record["comparison"] = comparison.to_dict()
    write_text_atomic(out / "bench.json", json.dumps(record, indent=2, default=_json_default))
    write_text_atomic(out / "bench.md", bench_markdown(record, comparison))
    if config.bench.update_baseline:
        write_baseline(baseline_path, record)
    return BenchResult(spec.name, out, record, comparison, time.perf_counter() - started)


def _run_data(
    suite: BenchSuite, data: BenchData, suite_path: Path, out: Path, reporter, gates, notes
):
    """Train, evaluate, export (ONNX, int8) and predict one data set, as the commands do; the
    release gate's verdict against ``compare_with`` goes to ``gates`` (or why not, to ``notes``)."""
    prefix = f"{data.name}."
    if data.synthetic is not None:
        root = out / "data"
        generate_dataset(
            root, data.synthetic, data.classes, data.per_class, data.size, seed=suite.seed
        )
    else:
        root = _resolve(data.root)
    recipe = data.recipe if data.recipe.is_absolute() else suite_path.parent / data.recipe
    config = load_config(recipe, data.set, data__root=root, out=out / "run", seed=suite.seed)
    if data.protocol == "leave_species_out":
        return _leave_species_out_figures(config, data, out, reporter)
    clock = time.perf_counter()
    trained = train(config, reporter=reporter)
    figures = {"train.seconds": time.perf_counter() - clock}
    run = RunDir(trained.run_dir)
    figures["train.epochs"] = float(len(trained.history))
    tested = config.updated(out=out / "eval", data__manifest=run.manifest, eval__split="test")
    result = evaluate(tested, run.path)
    report = result.metrics
    figures |= {
        "eval.top1": report["top1"],
        "eval.macro_f1": report["macro_f1"],
        "eval.ece": report["ece_after"],
        "eval.ece_before": report["ece_before"],
    }
    if result.specimen_metrics:
        figures["eval.specimen.top1"] = result.specimen_metrics["top1"]
    if result.open_set:
        figures["eval.known_flagged_unknown"] = result.open_set["known_flagged_unknown"]
    if report.get("ranks"):
        figures |= {
            f"eval.ranks.{key}": report["ranks"][key] for key in (*RANKS, UNKNOWN_RANK, "wrong")
        }
    gate = release_gate(tested.updated(out=out / "compare"), data, run.path, notes)
    if gate is not None:
        gates.append(gate)
    onnx_path = out / bundle_name("model", "onnx")
    onnx = export(config.updated(out=onnx_path, export__format="onnx"), run.path)
    figures |= {
        "export.onnx.top1_agreement": onnx.parity["top1_agreement"],
        "export.onnx.max_abs_logit_diff": onnx.parity["max_abs_logit_diff"],
    }
    bundles = {"onnx": onnx.path}
    if suite.int8:
        int8_path = out / bundle_name("model", "onnx", int8=True)
        int8_config = config.updated(out=int8_path, export__format="onnx", export__int8=True)
        int8 = export(int8_config, run.path)
        figures |= {
            "export.int8.top1_agreement": int8.parity["top1_agreement"],
            "export.int8.top1_drop_points": int8.parity["int8_top1_drop_points"],
        }
        bundles["int8"] = int8.path
    rows = read_manifest(run.manifest)
    tests = [(root / r.path, r.label) for r in rows if r.split == "test"]
    figures |= _predict_figures(config, onnx.path, tests, out, suite)
    if suite.speed is not None:
        paths = [path for path, _ in tests]
        figures |= _speed_figures(run.path, bundles, paths, suite, figures, out)
    return {prefix + name: float(value) for name, value in figures.items()}


def release_gate(config: Config, data: BenchData, model: Path, notes: list[str]):
    """``jianmu compare`` of the data set's ``compare_with`` model (OLD) against ``model`` (NEW)
    on ``config``'s split, its figures named ``<data>.compare.<figure>``. None without
    ``compare_with``; None and a line in ``notes`` when its file is absent."""
    if data.compare_with is None:
        return None
    old = _resolve(data.compare_with)
    if not old.exists():
        notes.append(
            f"{data.name}: compare_with {data.compare_with} not found; release gate skipped"
        )
        return None
    result = compare_models(config, old, model)
    notes.extend(f"{data.name}: compare: {note}" for note in result.notes)
    old_figures, new_figures = result.figures["old"], result.figures["new"]
    return judge(old_figures, new_figures, result.tolerances, prefix=f"{data.name}.compare.")


def _leave_species_out_figures(config: Config, data: BenchData, out: Path, reporter):
    """The open-set experiment's figures: the best rule's balanced recall, and the rank rule's
    answers and declarations averaged over the held-out species, with TTA views (``ranks.*``;
    ``unseen_ranks.*``: with thresholds fitted on the other held-out species)."""
    from jianmu.engine.leave_species_out import leave_species_out

    clock = time.perf_counter()
    result = leave_species_out(config.updated(out=out), reporter, held_out=data.hold_out)
    figures = {"openset.seconds": time.perf_counter() - clock}
    best = result.best_rule
    figures["openset.balanced_recall"] = result.mean(best, "balanced_recall")
    figures["openset.auroc"] = result.mean(best, "auroc")
    for name, ranks in (("ranks", result.ranks), ("unseen_ranks", result.unseen_ranks)):
        means = result.rank_means(ranks)
        views = max(means, key=int) if means else None
        for key, value in (means.get(views) or {}).items():
            figures[f"{name}.{key}"] = value
    return {f"{data.name}.{name}": float(value) for name, value in figures.items()}


def _predict_figures(
    config: Config, bundle: Path, tests: list[tuple[Path, str]], out: Path, suite: BenchSuite
) -> dict[str, float]:
    """``jianmu predict`` on the test images listed in a text file, as an inspector runs it."""
    listing = out / "test-images.txt"
    repeats = suite.speed.predict_repeats if suite.speed else 1
    write_text_atomic(listing, "".join(f"{path.resolve()}\n" for path, _ in tests))
    result = predict(config.updated(out=out / "predictions.csv"), bundle, [listing] * repeats)
    truth = {str(path.resolve()): label for path, label in tests}
    rows = [row for row in result.images if row["status"] == "ok"]
    correct = [
        row["top"][0]["class"] == truth.get(str(Path(row["path"]).resolve())) for row in rows
    ]
    summary = result.summary
    return {
        "predict.images": summary["images"],
        "predict.failed": summary["failed"],
        "predict.images_per_s": summary["images_per_s"],
        "predict.top1": float(np.mean(correct)) if correct else float("nan"),
    }


def _speed_figures(run, bundles, paths, suite: BenchSuite, figures, out: Path) -> dict[str, float]:
    speed = suite.speed
    onnx = load_model(bundles["onnx"])
    sample = np.stack([load_preprocessed(p, onnx.spec)[0] for p in paths[: speed.batch_size]])
    batch = fill_batch(sample, speed.batch_size)
    seconds = speed.seconds
    result = {
        "speed.torch_fp32_images_per_s": images_per_second(load_model(run).forward, batch, seconds),
        "speed.onnx_fp32_images_per_s": images_per_second(onnx.forward, batch, seconds),
    }
    result["speed.onnx_over_torch"] = (
        result["speed.onnx_fp32_images_per_s"] / result["speed.torch_fp32_images_per_s"]
    )
    if "int8" in bundles:
        int8 = load_model(bundles["int8"]).forward
        result["speed.onnx_int8_images_per_s"] = images_per_second(int8, batch, seconds)
        result["speed.int8_over_fp32"] = (
            result["speed.onnx_int8_images_per_s"] / result["speed.onnx_fp32_images_per_s"]
        )
    result["speed.predict_over_model"] = (
        figures["predict.images_per_s"] / result["speed.onnx_fp32_images_per_s"]
    )
    result |= decode_figures(onnx.spec, speed.large_jpeg, out)
    return result


def images_per_second(forward, batch: np.ndarray, seconds: float) -> float:
    """Throughput of ``forward`` on one batch for ``seconds``, after two warm-up calls."""
    forward(batch)
    forward(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forward(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def fill_batch(images: np.ndarray, size: int) -> np.ndarray:
    """``size`` images, repeating ``images`` as often as needed."""
    return np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])))


def decode_figures(spec, size: tuple[int, int], out: Path, repeats: int = 5) -> dict[str, float]:
    """Milliseconds to decode + preprocess one large photo-like JPEG: draft vs full decoding."""
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (size[1] // 64, size[0] // 64, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(photo, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory(dir=out) as folder:
        path = Path(folder) / "large.jpg"
        Image.fromarray(pixels).save(path, quality=90)

        def full() -> None:
            with Image.open(path) as image:
                preprocess(np.asarray(image.convert("RGB")), spec)

        draft = _best_ms(lambda: load_preprocessed(path, spec), repeats)
        whole = _best_ms(full, repeats)
    return {
        "speed.decode_ms_large_jpeg": draft,
        "speed.decode_full_ms_large_jpeg": whole,
        "speed.full_over_draft_decode": whole / draft,
    }


def _best_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def bench_markdown(record: dict[str, Any], comparison: Comparison) -> str:
    hardware_line = ", ".join(f"{k} {v}" for k, v in record["hardware"].items())
    lines = [
        f"# bench {record['suite']}",
        "",
        f"{record['date']}, commit {record['git_commit']}, {record['seconds']} s; {hardware_line}",
        "",
        comparison_markdown(comparison),
    ]
    lines += [f"- note: {note}" for note in record.get("notes", [])]
    return "\n".join(lines) + "\n"


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": memory,
            "platform": platform.platform()}  # fmt: skip


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in ("jianmu", "torch", "torchvision", "timm", "onnx", "onnxruntime", "numpy",
                    "albumentations", "opencv-python-headless", "pillow"):  # fmt: skip
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _resolve(path: Path) -> Path:
    """A suite path: as given if it exists from here, else relative to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return REPO / path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
