"""Export: bundles in each format, their metadata, the parity check and its guards, loading."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from tiny import settings, tiny_config
from typer.testing import CliRunner

from jianmu.bundle import META_KEY, OnnxBundle, load_model
from jianmu.cli import app
from jianmu.data.preprocess import load_preprocessed
from jianmu.data.synth import generate_dataset
from jianmu.engine import export as export_module
from jianmu.engine.export import ExportCheckError, export
from jianmu.engine.train import train
from jianmu.errors import JianmuError
from jianmu.models import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    names = ["Dalbergia_odorifera", "Pterocarpus_santalinus", "Tectona_grandis"]
    generate_dataset(base / "data", "wood", 3, per_class=12, size=48, seed=5, class_names=names)
    config = tiny_config(base / "data", base / "run", "calibration.tta=true")
    return train(config).run_dir


def val_batch(run, bundle, count=6):
    rows = [line.split(",") for line in (run / "manifest.csv").read_text().splitlines()[1:]]
    root = load_checkpoint(run).meta["config"]["data"]["root"]
    paths = [os.path.join(root, row[0]) for row in rows if row[3] == "val"][:count]
    return np.stack([load_preprocessed(path, bundle.spec)[0] for path in paths])


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_export_writes_a_self_contained_bundle_that_predicts_like_the_checkpoint(
    run, tmp_path, form
):
    out = tmp_path / f"model.{form}"
    result = export(settings(out=out, export__format=form), run)
    assert result.path == out and out.is_file() and result.size_bytes == out.stat().st_size
    parity = result.parity
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["images"] > 0
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["random_max_abs_logit_diff"] < 1e-4
    assert {"top1_reference", "top1_export", "random_top1_agreement"} <= set(parity)

    bundle = load_model(out)
    reference = load_model(run)
    checkpoint_meta = reference.meta
    assert bundle.kind == form and bundle.classes == reference.classes
    meta = bundle.meta
    assert meta["format"] == "jianmu.bundle/1" and meta["export"]["parity"] == parity
    assert meta["preprocessing"] == checkpoint_meta["preprocessing"]
    assert meta["manifest_sha256"] == checkpoint_meta["manifest_sha256"]
    assert meta["calibration"] == checkpoint_meta["calibration"]
    assert meta["unknown"] == checkpoint_meta["unknown"]
    assert meta["test_metrics"] == json.loads((run / "test_metrics.json").read_text())
    for key in ("jianmu_version", "timm_version", "torch_version", "date"):
        assert meta["export"][key]
    entries = meta["taxonomy_entries"]  # stored: no taxonomy file needed to read the flags
    assert [entry["name"] for entry in entries] == [
        "Dalbergia odorifera", "Pterocarpus santalinus", "Tectona grandis"
    ]  # fmt: skip
    assert entries[0]["chinese_name"] == "降香黄檀" and "CITES App. II" in entries[0]["flags"]
    assert entries[1]["cites"] == "II" and entries[2]["flags"] == []

    batch = val_batch(run, bundle)
    for views in (1, 8):  # same probabilities, scores and verdicts as the checkpoint
        ours, theirs = bundle.predict(batch, views), reference.predict(batch, views)
        np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-4)
        np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-3, atol=1e-3)
        assert (ours.known == theirs.known).all()
    assert bundle.predict_proba(batch[:1]).shape == (1, 3)  # any batch size


def test_onnx_bundle_declares_opset_dynamic_batch_and_metadata(run, tmp_path):
    path = export(settings(out=tmp_path / "m.onnx"), run).path
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: any batch size
    properties = {p.key: p.value for p in model.metadata_props}
    assert json.loads(properties[META_KEY])["classes"] == load_checkpoint(run).classes


def test_int8_export_is_quantized_guarded_and_keeps_its_unknown_recall(run, tmp_path):
    result = export(settings(out=tmp_path / "m.int8.onnx", export__int8=True), run)
    model = onnx.load(str(result.path))
    operators = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators  # static QDQ
    assert result.parity["passed"] and "int8_top1_drop_points" in result.parity
    assert result.size_bytes < (run / "best.safetensors").stat().st_size
    bundle = load_model(result.path)
    meta = bundle.meta
    # fitted again for one view and the tiny recipe's test-time views (left-right flips: 2)
    assert meta["unknown"]["refit_for_int8"] and set(meta["ranks"]["thresholds"]) == {"1", "2"}
    batch = val_batch(run, bundle, count=100)
    rule_thresholds = {bundle.tta_views: meta["unknown"]["threshold"]}
    rule_thresholds[1] = meta["calibration"]["single_view"]["thresholds"][meta["unknown"]["rule"]]
    # thresholds chosen again for the int8 model's own embeddings
    for views in (1, bundle.tta_views):
        scores = bundle.predict(batch, views).scores
        assert (scores >= rule_thresholds[views]).mean() >= meta["unknown"]["target_known_recall"]


def test_int8_guard_refuses_an_accuracy_drop_and_leaves_no_file(run, tmp_path, monkeypatch):
    real = export_module.measure_parity

    def worse(*args):
        figures = real(*args)
        return {**figures, "top1_reference": 0.90, "top1_export": 0.889}  # 1.1 points

    monkeypatch.setattr(export_module, "measure_parity", worse)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportCheckError, match="fell 1.10 points"):
        export(settings(out=out, export__int8=True), run)
    assert not out.exists() and not list(tmp_path.iterdir())
    config = settings("export.int8_max_top1_drop=1.2", out=out, export__int8=True)  # a setting
    assert export(config, run).parity["passed"]


def test_parity_check_catches_mismatched_preprocessing(run, tmp_path, monkeypatch):
    real = export_module._bundle_meta

    def broken(*args):
        meta = real(*args)
        meta["preprocessing"] = {**meta["preprocessing"], "mean": [0, 0, 0], "std": [0.02] * 3}
        return meta

    monkeypatch.setattr(export_module, "_bundle_meta", broken)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckError, match="agrees with PyTorch on") as caught:
        export(settings(out=out), run)
    assert caught.value.parity["top1_agreement"] < 0.995 and not out.exists()
    result = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert result.exit_code == 1 and "export refused" in result.output and not out.exists()


def test_cli_export_prints_parity_and_writes_the_bundle(run, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and "100.00%" in result.output and out.is_file()
    bad = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert bad.exit_code == 2 and "export.format" in bad.output and "'onnx'" in bad.output
    bad = CliRunner().invoke(app, ["export", str(run), "--format", "torchscript", "--int8"])
    assert bad.exit_code == 2 and "--int8 needs --format onnx" in bad.output


def test_export_without_validation_images_says_how_to_give_them(run, tmp_path):
    with pytest.raises(JianmuError, match="pass --data ROOT"):
        export(settings(out=tmp_path / "m.onnx", data__root=tmp_path / "nowhere"), run)


def test_loading_an_onnx_bundle_does_not_import_torch(run, tmp_path):
    path = export(settings(out=tmp_path / "m.onnx"), run).path
    image = next((run.parent / "data").rglob("*.jpg"))
    code = f"""
import sys
import numpy as np
import jianmu
from jianmu.data.preprocess import load_preprocessed
bundle = jianmu.load_model({str(path)!r})
prediction = bundle.predict(load_preprocessed({str(image)!r}, bundle.spec)[0][None], views=8)
assert prediction.probabilities.shape == (1, 3)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "albumentations")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_pickled_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weights": torch.zeros(2), "x": _Payload(marker)}))
    with pytest.raises(JianmuError, match="refused: this file carries pickled Python objects"):
        load_model(evil)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Payload(marker)}, evil)
    with pytest.raises(JianmuError, match="refused"):
        load_model(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(JianmuError, match="without jianmu metadata"):
        load_model(plain)


def test_bundles_with_missing_or_inconsistent_metadata_are_refused(run, tmp_path):
    path = export(settings(out=tmp_path / "m.onnx"), run).path
    model = onnx.load(str(path))
    properties = {p.key: p.value for p in model.metadata_props}

    def rewrite(name, meta):
        del model.metadata_props[:]
        if meta is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = META_KEY, json.dumps(meta)
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    with pytest.raises(JianmuError, match="no jianmu metadata"):
        load_model(rewrite("bare.onnx", None))
    meta = json.loads(properties[META_KEY])
    with pytest.raises(JianmuError, match="outputs 3 classes but its metadata lists 4"):
        load_model(rewrite("four.onnx", {**meta, "classes": [*meta["classes"], "extra"]}))
    without = {k: v for k, v in meta.items() if k != "preprocessing"}
    with pytest.raises(JianmuError, match="lacks 'preprocessing'"):
        OnnxBundle(rewrite("nopre.onnx", without))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(JianmuError, match="not a readable ONNX model"):
        load_model(tmp_path / "junk.onnx")
    with pytest.raises(JianmuError, match="model not found"):
        load_model(tmp_path / "missing.onnx")
