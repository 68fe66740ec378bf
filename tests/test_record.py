"""The inspection record: sealed on writing, and `check_record` finds a changed record, input or
model; re-indenting or re-ordering the file is no change."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagefiles import write_image

from jianmu.errors import JianmuError
from jianmu.record import (
    FORMAT,
    build_record,
    bytes_sha256,
    check_record,
    file_sha256,
    input_entry,
    model_sha256,
    record_path,
    runtime_versions,
    seal,
    write_record,
)


def _case(folder: Path) -> dict[str, Path]:
    """A model file, two photos and a sealed record of a run over them, written in ``folder``."""
    model = folder / "model.onnx"
    model.write_bytes(b"not really onnx, but bytes to hash")
    photos = [write_image(folder / "photos" / f"s1_{i}.png", seed=i) for i in range(2)]
    record = build_record(
        command="verify",
        model_path=model,
        model_info={"format": "onnx", "metadata_version": 3, "classes": ["a", "b"]},
        settings={"top_k": 3, "tta": False, "thresholds": {"species": np.float32(0.5)}},
        inputs=[input_entry(p, bytes_sha256(p.read_bytes()), p.stat().st_size) for p in photos],
        images=[
            {"path": photos[0], "taxon": "a", "probability": np.float32(0.875)},
            {"path": photos[1], "taxon": "b", "probability": 0.625, "score": float("nan")},
        ],
        specimens=[{"specimen": "s1", "decision": "consistent"}],
        summary={"images": 2, "failed": 0},
        operator="Li Wei",
        device="bench-3",
    )
    path = write_record(record_path(folder / "results.csv"), record)
    return {"model": model, "photos": photos, "record": path}


def _rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data), indent=4, ensure_ascii=False), encoding="utf-8")


def test_a_written_record_checks_clean_and_holds_what_was_hashed(tmp_path):
    case = _case(tmp_path)
    assert case["record"] == tmp_path / "results.record.json"
    written = json.loads(case["record"].read_text(encoding="utf-8"))
    assert written["format"] == FORMAT and written["command"] == "verify"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", written["created"])
    assert (written["operator"], written["device"]) == ("Li Wei", "bench-3")
    assert written["model"]["sha256"] == file_sha256(case["model"])
    assert written["model"]["metadata_version"] == 3
    assert written["images"][0]["probability"] == 0.875
    assert written["images"][1]["score"] is None  # NaN is not JSON
    assert written["inputs"][0]["sha256"] == file_sha256(case["photos"][0])
    assert seal(written) == written  # sealing again gives the same hash

    check = check_record(case["record"])
    assert check.ok and check.record_intact
    assert (check.inputs_checked, check.inputs_changed, check.inputs_missing) == (2, [], [])
    assert check.model_changed is False
    assert (check.command, check.created) == ("verify", written["created"])
    lines = check.lines()
    assert f"record intact (sha256 {written['record_sha256']})" in lines
    assert lines[-1] == "2 inputs re-hashed, all unchanged"


def test_editing_one_decision_breaks_the_seal(tmp_path):
    case = _case(tmp_path)

    def edit(data):
        data["images"][0]["probability"] = 0.975
        return data

    _rewrite(case["record"], edit)
    check = check_record(case["record"])
    assert not check.record_intact and not check.ok
    assert "record ALTERED: its content does not match its hash" in check.lines()


def test_a_number_edited_in_the_text_breaks_the_seal(tmp_path):
    case = _case(tmp_path)
    text = case["record"].read_text(encoding="utf-8")
    assert text.count('"consistent"') == 1
    case["record"].write_text(text.replace('"consistent"', '"inconsistent"'), encoding="utf-8")
    assert not check_record(case["record"]).record_intact


def test_reordering_and_reindenting_keep_the_seal(tmp_path):
    case = _case(tmp_path)

    def reverse(value):
        if isinstance(value, dict):
            return {key: reverse(value[key]) for key in reversed(list(value))}
        return [reverse(item) for item in value] if isinstance(value, list) else value

    _rewrite(case["record"], reverse)
    assert list(json.loads(case["record"].read_text(encoding="utf-8")))[0] == "record_sha256"
    assert check_record(case["record"]).ok
    data = json.loads(case["record"].read_text(encoding="utf-8"))
    case["record"].write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    assert check_record(case["record"]).ok


def test_one_changed_byte_of_an_input_is_found(tmp_path):
    case = _case(tmp_path)
    photo = case["photos"][1]
    data = bytearray(photo.read_bytes())
    data[-20] ^= 0x01
    photo.write_bytes(bytes(data))
    check = check_record(case["record"])
    assert check.record_intact and not check.ok
    assert check.inputs_changed == [str(photo)] and check.inputs_checked == 2
    assert f"input changed since: {photo}" in check.lines()
    assert check.lines()[-1] == "2 inputs re-hashed, 1 changed"


def test_a_deleted_input_is_missing(tmp_path):
    case = _case(tmp_path)
    case["photos"][0].unlink()
    check = check_record(case["record"])
    assert check.inputs_missing == [str(case["photos"][0])] and check.inputs_checked == 1
    assert not check.ok
    assert f"input missing: {case['photos'][0]}" in check.lines()


def test_a_changed_model_fails_and_an_absent_one_is_a_note(tmp_path):
    case = _case(tmp_path)
    case["model"].write_bytes(b"another model")
    check = check_record(case["record"])
    assert check.model_changed is True and not check.ok
    assert f"model changed since: {case['model']}" in check.lines()

    case["model"].unlink()
    check = check_record(case["record"])
    assert check.model_changed is None and check.ok
    assert f"model not here to check: {case['model']}" in check.lines()


def test_a_case_folder_moved_elsewhere_is_found_by_relative_paths(tmp_path, monkeypatch):
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    photo = write_image(Path("photo.png"))
    record = build_record(
        command="predict", model_path=write_image(Path("model.png"), seed=9), model_info={},
        settings={}, inputs=[input_entry(photo, file_sha256(photo), photo.stat().st_size)],
        images=[], specimens=[], summary={}, created="2025-01-31T09:30:00Z", host="lab-pc",
    )  # fmt: skip
    write_record("predict.record.json", record)
    monkeypatch.chdir(tmp_path)
    shutil.move(first, tmp_path / "moved")
    check = check_record(tmp_path / "moved" / "predict.record.json")
    assert check.ok and check.inputs_checked == 1 and check.model_changed is False
    assert check.created == "2025-01-31T09:30:00Z"


def test_inputs_unreadable_at_the_time_are_noted_not_checked(tmp_path):
    record = build_record(
        command="predict", model_path=write_image(tmp_path / "m.png"), model_info={},
        settings={}, inputs=[input_entry(tmp_path / "broken.jpg", None, None)], images=[],
        specimens=[], summary={},
    )  # fmt: skip
    check = check_record(write_record(tmp_path / "r.record.json", record))
    assert check.ok and check.inputs_unhashed == [str(tmp_path / "broken.jpg")]
    assert "1 input unreadable when recorded, not checked" in check.lines()


def test_a_run_folder_is_hashed_by_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "b.safetensors").write_bytes(b"weights b")
    (run / "a.safetensors").write_bytes(b"weights a")
    expected = bytes_sha256(
        "".join(
            f"{name}\t{bytes_sha256(data)}\n"
            for name, data in (("a.safetensors", b"weights a"), ("b.safetensors", b"weights b"))
        ).encode()
    )
    assert model_sha256(run) == expected
    (run / "metrics.csv").write_text("epoch\n1\n")
    assert model_sha256(run) == expected
    (run / "a.safetensors").write_bytes(b"weights A")
    assert model_sha256(run) != expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"rows": []}', "not a jianmu record"),
        (b"[1, 2]", "not a jianmu record"),
        (b'{"format": "jianmu.record/9", "record_sha256": "x"}', "this jianmu reads"),
        (json.dumps({"format": FORMAT}).encode(), "no 'record_sha256'"),
    ],
)
def test_a_file_that_is_not_a_record_is_one_error_naming_it(tmp_path, text, says):
    path = tmp_path / "odd.record.json"
    path.write_bytes(text)
    with pytest.raises(JianmuError, match=says) as caught:
        check_record(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_record_is_one_error_naming_it(tmp_path):
    with pytest.raises(JianmuError, match="cannot read record .*absent.record.json"):
        check_record(tmp_path / "absent.record.json")


def test_nan_written_into_a_record_is_an_alteration(tmp_path):
    case = _case(tmp_path)
    text = case["record"].read_text(encoding="utf-8")
    case["record"].write_text(text.replace("0.875", "NaN"), encoding="utf-8")
    assert not check_record(case["record"]).record_intact


def test_record_path_sits_beside_the_output():
    assert record_path(Path("out/results.csv")) == Path("out/results.record.json")
    assert record_path(Path("predict.html")) == Path("predict.record.json")


def test_seal_takes_numpy_and_paths_and_refuses_other_objects():
    sealed = seal({"a": np.arange(3, dtype=np.int64), "b": Path("x/y"), "c": (np.bool_(True),)})
    assert sealed["a"] == [0, 1, 2] and sealed["b"] == str(Path("x/y")) and sealed["c"] == [True]
    with pytest.raises(TypeError, match="JSON data"):
        seal({"a": object()})
    with pytest.raises(ValueError, match="seal"):
        write_record("unused.record.json", {"format": FORMAT})


def test_runtime_versions_import_no_torch():
    code = (
        "import jianmu.record, sys; v = jianmu.record.runtime_versions(); "
        "assert 'torch' not in sys.modules and 'torch' not in v; print(v['numpy'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == np.__version__
    versions = runtime_versions()
    assert versions["python"] and versions["jianmu"]
