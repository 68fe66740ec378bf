"""`jianmu bench`: a tiny synthetic suite end to end, its files, the baseline round trip and a
regression named by the CLI. The comparison rules themselves are in test_baseline.py."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.config import load_config
from jianmu.engine.bench import BenchSkipped, bench, find_suite
from jianmu.errors import JianmuError

RECIPE = {
    "model": {"name": "test_resnet", "img_size": 32},
    "train": {"epochs": 2, "batch_size": 8, "workers": 0, "lr": 0.01},
    "data": {"min_images_per_class": 2},
}


def write_suite(folder, baseline, **changes):
    (folder / "tiny-recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    suite = {
        "name": "tiny",
        "data": [
            {
                "name": "synth3",
                "synthetic": "wood",
                "classes": 3,
                "per_class": 8,
                "size": 48,
                "recipe": "tiny-recipe.yaml",
            }
        ],  # fmt: skip
        "int8": True,
        "speed": {"batch_size": 4, "seconds": 0.2, "large_jpeg": [640, 480]},
        "baseline": str(baseline),
        "tolerances": {
            "synth3.eval.top1": {"max_drop": 0.05},
            "synth3.export.onnx.top1_agreement": {"min_value": 0.995},
            "synth3.predict.failed": {"max_value": 0},
            "synth3.speed.predict_over_model": {"min_ratio": 0.01},
        },
        **changes,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_bench_records_figures_writes_files_and_judges_against_the_baseline(tmp_path):
    baseline = tmp_path / "benchmarks" / "baseline.json"
    suite = write_suite(tmp_path, baseline)
    config = load_config(out=tmp_path / "out", bench__update_baseline=True)
    result = bench(config, suite)
    figures = result.figures
    for name in ("eval.top1", "eval.macro_f1", "eval.ece", "export.onnx.top1_agreement",
                 "export.int8.top1_drop_points", "predict.images_per_s", "predict.top1",
                 "speed.onnx_fp32_images_per_s", "speed.torch_fp32_images_per_s",
                 "speed.predict_over_model", "speed.decode_ms_large_jpeg"):  # fmt: skip
        assert f"synth3.{name}" in figures, name
    assert figures["synth3.predict.failed"] == 0 and figures["synth3.predict.images"] > 0
    shares = [figures[f"synth3.eval.ranks.{rank}"] for rank in ("species", "genus", "family")]
    assert sum(shares) + figures["synth3.eval.ranks.unknown"] == pytest.approx(1.0)
    assert 0 <= figures["synth3.eval.ranks.wrong"] <= 1
    record = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert record["figures"] == pytest.approx(figures)
    assert record["hardware"]["cpu_count"] and record["versions"]["onnxruntime"]
    assert record["seeds"] == {"seed": 42} and "git_commit" in record
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "synth3.eval.top1" in markdown and "**PASS**" in markdown
    assert json.loads(baseline.read_text())["figures"] == pytest.approx(figures)

    # A baseline far better than anything this run can reach: the CLI names the figure, exit 1.
    stored = json.loads(baseline.read_text())
    stored["figures"]["synth3.eval.top1"] = 2.0
    baseline.write_text(json.dumps(stored))
    done = CliRunner().invoke(app, ["bench", str(suite), "--out", str(tmp_path / "again")])
    assert done.exit_code == 1, done.output
    assert "synth3.eval.top1" in done.output and "regression" in done.output


def test_bench_skips_cleanly_when_the_real_data_is_absent(tmp_path):
    suite = write_suite(
        tmp_path,
        tmp_path / "b.json",
        data=[{"name": "real", "root": str(tmp_path / "absent"), "recipe": "tiny-recipe.yaml"}],
        tolerances={"real.eval.top1": {"max_drop": 0.02}},
    )
    with pytest.raises(BenchSkipped, match="is not on this machine"):
        bench(load_config(out=tmp_path / "out"), suite)
    done = CliRunner().invoke(app, ["bench", str(suite)])
    assert done.exit_code == 0 and "skipped" in done.output


def test_unknown_suites_and_bad_tolerances_are_one_line_errors(tmp_path):
    with pytest.raises(JianmuError, match="unknown bench suite .nope.; suites: ci, openset, scale"):
        find_suite("nope")
    suite = write_suite(tmp_path, tmp_path / "b.json", tolerances={"x": {"max_dorp": 1}})
    done = CliRunner().invoke(app, ["bench", str(suite)])
    assert done.exit_code == 2 and "max_dorp" in done.output
