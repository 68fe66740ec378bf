"""Adding species without retraining: the class map's arithmetic, ONNX in -> ONNX out without
torch, checkpoints, provenance, removal, predict's marking, and the refusals."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_export import run  # noqa: F401 - the tiny trained run (3 wood species), a module fixture
from tiny import settings
from typer.testing import CliRunner

from jianmu.bundle import load_model
from jianmu.calibration.extend import ClassMap
from jianmu.calibration.scores import FeatureStatistics, MahalanobisModel, softmax
from jianmu.cli import app
from jianmu.data.synth import generate_dataset
from jianmu.engine.add_species import add_species
from jianmu.engine.export import export
from jianmu.engine.predict import predict
from jianmu.errors import JianmuError
from jianmu.record import model_sha256

NEW = "Dalbergia_latifolia"


@pytest.fixture(scope="module")
def onnx(run, tmp_path_factory):  # noqa: F811 - the fixture imported above
    return export(settings(out=tmp_path_factory.mktemp("base") / "base.onnx"), run).path


@pytest.fixture(scope="module")
def new_folder(tmp_path_factory):
    """A class folder of a species the model lacks: 3 specimen sub-folders of 3 photos."""
    root = tmp_path_factory.mktemp("new")
    generate_dataset(root, "wood", 1, per_class=9, size=48, specimens_per_class=3, seed=11,
                     class_names=[NEW])  # fmt: skip
    return root / NEW


@pytest.fixture(scope="module")
def extended(onnx, new_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("extended") / "plus.onnx"
    return add_species(settings(out=out), onnx, [new_folder])


def val_items(run):  # noqa: F811
    rows = [line.split(",") for line in (run / "manifest.csv").read_text().splitlines()[1:]]
    meta = load_model(run).meta
    data = meta["config"]["data"]["root"]
    classes = meta["classes"]
    return [(f"{data}/{row[0]}", classes.index(row[1])) for row in rows if row[3] == "val"]


def test_added_classes_take_their_gaussian_share_and_leave_the_known_order():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 3)) * 3  # 3 network classes kept, 1 added
    statistics = FeatureStatistics(MahalanobisModel(means, np.eye(3)), None, None)
    class_map = ClassMap(outputs=3, keep=(0, 1, 2), added=1)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    embeddings = rng.normal(size=(6, 3)) * 3
    temperature = 1.7
    mapped = class_map.apply(logits, embeddings, statistics, temperature)
    assert mapped.shape == (6, 4)
    np.testing.assert_array_equal(mapped[:, :3], logits)  # network logits untouched
    probabilities = softmax(mapped, temperature)
    gaussian = softmax(-0.5 * ((embeddings[:, None] - means[None]) ** 2).sum(-1))
    np.testing.assert_allclose(probabilities[:, 3], gaussian[:, 3], atol=1e-5)  # its share
    rest = softmax(logits, temperature) * (1 - gaussian[:, 3:4])  # the others, in proportion
    np.testing.assert_allclose(probabilities[:, :3], rest, atol=1e-5)
    removed = ClassMap(outputs=3, keep=(2, 0), added=0).apply(logits, embeddings, None, 1.0)
    np.testing.assert_array_equal(removed, logits[:, [2, 0]])


def test_onnx_in_onnx_out_without_torch(onnx, new_folder, tmp_path):
    out = tmp_path / "plus.onnx"
    heavy = ("torch", "timm", "torchvision", "albumentations", "matplotlib")
    loaded = f"sorted(m for m in sys.modules if m in {heavy!r})"
    code = (
        "import sys, json; from typer.testing import CliRunner; from jianmu.cli import app; "
        f"r = CliRunner().invoke(app, ['add-species', {str(onnx)!r}, {str(new_folder)!r}, "
        f"'--out', {str(out)!r}]); "
        f"print(json.dumps([r.exit_code, r.output, {loaded}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    code, output, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert (code, imported) == (0, []), output + result.stderr
    assert f"added {NEW}" in output and "9 photos, 3 specimens" in output
    model = load_model(out)
    assert model.kind == "onnx" and model.classes == [*load_model(onnx).classes, NEW]


def test_known_classes_keep_their_logits_and_order(run, onnx, extended):  # noqa: F811
    base, plus = load_model(onnx), load_model(extended.path)
    items = val_items(run)
    before, after = base.run(items), plus.run(items)
    np.testing.assert_array_equal(after.logits[:, :3], before.logits)
    p_before = base.predict_outputs(before.logits, before.embeddings, 1).probabilities
    p_after = plus.predict_outputs(after.logits, after.embeddings, 1).probabilities
    # the known classes shrink by the added class's share, all by the same factor
    np.testing.assert_allclose(p_after[:, :3], p_before * (1 - p_after[:, 3:4]), atol=1e-5)
    far = p_after[:, 3] < 0.01  # images far from the new class: answers unchanged
    assert far.any()
    assert (p_after[far].argmax(1) == p_before[far].argmax(1)).all()
    np.testing.assert_allclose(p_after[far, :3], p_before[far], atol=0.01)


def test_provenance_and_check_are_stored(onnx, new_folder, extended):
    meta = load_model(extended.path).meta
    step = meta["extension"]["history"][-1]
    assert meta["extension"]["keep"] == [0, 1, 2] and meta["extension"]["added"] == 1
    assert step["base"]["sha256"] == model_sha256(onnx) and step["base"]["classes"] == 3
    added = step["added"][0]
    assert added["class"] == NEW and added["species"] == "Dalbergia latifolia"
    assert added["photos"] == 9 and added["specimens"] == 3 and len(added["files"]) == 9
    assert all(len(f["sha256"]) == 64 and f["specimen"].startswith(NEW) for f in added["files"])
    assert step["check"]["kept_max_abs_logit_diff"] == 0.0
    assert meta["extension"]["species_margin"][0] >= 0  # 3 specimens: a leave-one-out margin
    assert step["check"]["known_order_agreement"] == 1.0
    # the new class has a lineage (genus Dalbergia) and its taxonomy entry, like trained classes
    assert meta["hierarchy"]["lineage"][3]["genus"] == "Dalbergia"
    assert meta["taxonomy_entries"][3]["name"] == "Dalbergia latifolia"


def test_predict_marks_an_extended_model(extended, new_folder, tmp_path):
    result = predict(settings(out=tmp_path / "p.json", predict__html=tmp_path / "p.html"),
                     extended.path, [new_folder])  # fmt: skip
    assert result.summary["extended"]["added"] == [NEW]
    assert any("extended model" in warning for warning in result.summary["warnings"])
    assert "Extended model" in (tmp_path / "p.html").read_text("utf-8")
    record = json.loads((tmp_path / "p.record.json").read_text("utf-8"))
    assert record["model"]["extended"]["added"] == [NEW]


def test_run_folder_gives_a_checkpoint_that_exports(run, new_folder, tmp_path):  # noqa: F811
    out = tmp_path / "plus.safetensors"
    result = add_species(settings(out=out), run, [new_folder])
    model = load_model(out)
    assert model.kind == "checkpoint" and model.classes[-1] == NEW
    bundle = export(settings(out=tmp_path / "plus.onnx"), out)
    assert bundle.parity["top1_agreement"] == 1.0
    assert load_model(bundle.path).classes == model.classes
    assert result.check["kept_max_abs_logit_diff"] == 0.0
    with pytest.raises(JianmuError, match="export the base model with --int8"):
        export(settings(out=tmp_path / "q.onnx", export__int8=True), out)


def test_remove_drops_a_class(extended, tmp_path):
    out = tmp_path / "less.onnx"
    result = add_species(settings(out=out), extended.path, [], ["Tectona_grandis"])
    model = load_model(out)
    assert result.removed == ["Tectona_grandis"] and "Tectona_grandis" not in model.classes
    assert model.classes[-1] == NEW and model.class_map.keep == (0, 1)
    assert model.statistics.mahalanobis.means.shape[0] == 3
    with pytest.raises(JianmuError, match="not a class of the model.*Tectona_grandis"):
        add_species(settings(out=tmp_path / "x.onnx"), extended.path, [], ["Tectona_grandi"])


def test_refusals_are_one_line(onnx, new_folder, tmp_path):
    runner = CliRunner()

    def refused(*args):
        result = runner.invoke(app, ["add-species", str(onnx), *map(str, args)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        return result.output

    assert "not found" in refused(tmp_path / "nope", "--out", tmp_path / "a.onnx")
    odd = tmp_path / "Notaspecies_atall"
    shutil.copytree(new_folder, odd)
    assert "not in the taxonomy" in refused(odd, "--out", tmp_path / "a.onnx")
    known = tmp_path / "Tectona_grandis"
    shutil.copytree(new_folder, known)
    assert "already has" in refused(known, "--out", tmp_path / "a.onnx")
    assert "--out" in refused(new_folder)
    assert ".onnx file" in refused(new_folder, "--out", tmp_path / "a.safetensors")
    assert "nothing to do" in refused("--out", tmp_path / "a.onnx")
    empty = tmp_path / "Dalbergia_cultrata"
    empty.mkdir()
    assert "no photos" in refused(empty, "--out", tmp_path / "a.onnx")
    assert not list(tmp_path.glob("a.*"))  # nothing written


def test_a_species_of_one_specimen_never_answers_at_species(onnx, new_folder, tmp_path):
    one = tmp_path / NEW
    shutil.copytree(sorted(p for p in new_folder.iterdir() if p.is_dir())[0], one / "S1")
    result = add_species(settings(out=tmp_path / "one.onnx"), onnx, [one])
    model = load_model(result.path)
    assert model.meta["extension"]["species_margin"] == [None]
    photos = sorted((one / "S1").iterdir())
    outputs = model.run([(photo, 3) for photo in photos])
    prediction = model.predict_outputs(outputs.logits, outputs.embeddings, 1)
    top = prediction.probabilities.argmax(1)
    assert not any(r == "species" and t == 3 for r, t in zip(prediction.rank, top, strict=True))
