"""Files as the field has them: FIFOs and stalled reads never hang, symbolic-link loops never
crash a walk, GIFs are read, images too small to judge get a status instead of a guess."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from imagefiles import (
    write_animated_gif,
    write_fifo,
    write_image,
    write_symlink_loops,
)
from PIL import Image
from tiny import settings, tiny_config
from typer.testing import CliRunner

import jianmu
from jianmu.cli import app
from jianmu.data import images
from jianmu.data.audit import audit_dataset
from jianmu.data.images import ImageDecodeError, load_image, open_image, read_image_bytes
from jianmu.data.inputs import find_inputs
from jianmu.data.samples import find_dataset
from jianmu.data.synth import generate_dataset

CLASSES = ["Dalbergia_odorifera", "Senna_siamea", "Tectona_grandis"]
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("odd")
    generate_dataset(base / "data", "wood", 3, per_class=8, size=48, seed=3, class_names=CLASSES)
    run = jianmu.train(tiny_config(base / "data", base / "run", "train.epochs=1")).run_dir
    return jianmu.export(settings(out=base / "model.onnx"), run).path


def _statuses(result, root: Path) -> dict[str, str]:
    return {Path(r["path"]).relative_to(root).as_posix(): r["status"] for r in result.images}


# --- bounded reads --------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = write_fifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        read_image_bytes(fifo)
    with pytest.raises(ImageDecodeError, match="not an image \\(a folder\\)"):
        read_image_bytes(tmp_path)


def test_a_stalled_read_times_out_and_the_thread_is_left_behind(tmp_path, monkeypatch):
    path = write_image(tmp_path / "slow.jpg")
    release = threading.Event()
    real = images._read_regular_file

    def stalled(target):
        release.wait(30)  # a network share that does not answer
        return real(target)

    monkeypatch.setattr(images, "_read_regular_file", stalled)
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"read timed out \(after 0.2 s\)"):
        load_image(path, timeout=0.2)
    assert time.perf_counter() - started < 5
    release.set()


def test_predict_gives_fifos_and_stalled_files_a_row_and_goes_on(model, tmp_path, monkeypatch):
    folder = tmp_path / "field"
    for index in range(3):
        write_image(folder / f"photo{index}.jpg", seed=index)
    write_fifo(folder / "pipe.jpg")
    write_image(folder / "slow.jpg", seed=9)
    release = threading.Event()
    real = images._read_regular_file

    def stall_one(target):
        if Path(target).name == "slow.jpg":
            release.wait(60)
        return real(target)

    monkeypatch.setattr(images, "_read_regular_file", stall_one)
    started = time.perf_counter()
    config = settings("data.read_timeout=0.5", out=tmp_path / "rows.csv")
    result = jianmu.predict(config, model, [folder])
    elapsed = time.perf_counter() - started
    release.set()
    statuses = _statuses(result, folder)
    assert statuses["pipe.jpg"] == "not a regular file"
    assert statuses["slow.jpg"] == "read timed out (after 0.5 s)"
    assert [statuses[f"photo{i}.jpg"] for i in range(3)] == ["ok"] * 3
    assert result.summary["failed"] == 2 and elapsed < 30


def test_audit_and_training_pass_a_fifo_by(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, "wood", 2, per_class=6, size=48, seed=1, class_names=CLASSES[:2])
    write_fifo(root / CLASSES[0] / "s01" / "pipe.jpg")
    config = settings("data.min_images_per_class=2").data
    report = audit_dataset(root, config)
    assert [(issue.path, issue.detail) for issue in report.unreadable] == [
        (f"{CLASSES[0]}/s01/pipe.jpg", "not a regular file")
    ]
    trained = jianmu.train(tiny_config(root, tmp_path / "run", "train.epochs=1"))
    rows = (trained.run_dir / "manifest.csv").read_text()
    assert "pipe.jpg" not in rows  # unreadable: left out of the split


# --- symbolic-link loops at every walk ------------------------------------------------------------


@pytest.fixture
def looped(tmp_path) -> Path:
    root = tmp_path / "data"
    generate_dataset(root, "wood", 2, per_class=6, size=48, seed=2, class_names=CLASSES[:2])
    write_symlink_loops(root)  # at the top, where class folders are listed
    write_symlink_loops(root / CLASSES[0] / "s01")  # inside a class folder
    (root / CLASSES[1] / "back").symlink_to(root / CLASSES[0])  # a folder link: not followed
    return root


def test_a_dataset_walk_reports_link_loops_and_never_crashes(looped):
    found = find_dataset(looped, [".jpg"])
    assert found.classes == CLASSES[:2]
    broken = sorted(path.relative_to(looped).as_posix() for path in found.broken_links)
    assert broken == sorted(
        [f"{CLASSES[0]}/s01/{name}" for name in ("ping", "pong", "self-loop")]
        + ["ping", "pong", "self-loop"]
    )
    assert len(found.samples) == 12  # the folder link is not walked twice


def test_every_command_that_walks_survives_a_link_loop(looped, tmp_path, model):
    audit = tmp_path / "a.json"
    options = ["--no-taxonomy", "--set", "data.min_images_per_class=2", "--json", str(audit)]
    checked = runner.invoke(app, ["data", "check", str(looped), *options])
    assert checked.exit_code == 0, checked.output
    assert "broken links / link loops" in checked.output
    assert len(json.loads(audit.read_text())["broken_links"]) == 6
    split = runner.invoke(app, ["data", "split", str(looped), "--out", str(tmp_path / "m.csv")])
    assert split.exit_code == 0, split.output
    trained = jianmu.train(tiny_config(looped, tmp_path / "run", "train.epochs=1"))
    assert trained.test_metrics is not None
    found = find_inputs([looped / CLASSES[0]])
    assert {image.path.name for image in found.images} == {
        p.name for p in (looped / CLASSES[0] / "s01").glob("*.jpg")
    } | {  # noqa: E501
        p.name for p in (looped / CLASSES[0]).rglob("*.jpg")
    }
    predicted = runner.invoke(
        app, ["predict", str(model), str(looped), "-o", str(tmp_path / "p.csv")]
    )
    assert predicted.exit_code == 0, predicted.output


# --- GIF ------------------------------------------------------------------------------------------


def test_gif_is_read_as_its_first_frame_and_the_audit_says_so(tmp_path):
    path = write_animated_gif(tmp_path / "data" / "a" / "moving.gif", frames=3)
    picture, probe = open_image(path)
    assert probe.format == "GIF" and probe.frames == 3 and picture.mode == "RGB"
    with Image.open(path) as first:
        expected = np.asarray(first.convert("RGB"))
    assert np.array_equal(np.asarray(picture), expected)
    write_image(tmp_path / "data" / "a" / "still.gif", seed=4)
    write_image(tmp_path / "data" / "b" / "x.jpg", seed=5)
    report = audit_dataset(tmp_path / "data", settings("data.min_images_per_class=1").data)
    assert report.num_files == 3 and not report.unreadable
    assert [(issue.path, issue.detail) for issue in report.animated] == [
        ("a/moving.gif", "3 frames; the first is used")
    ]
    assert "1 animated image reduced to the first frame" in report.warnings


def test_predict_reads_gif(model, tmp_path):
    write_animated_gif(tmp_path / "in" / "capture.gif", size=(64, 64))
    result = jianmu.predict(settings(), model, [tmp_path / "in"])
    assert result.images[0]["status"] == "ok" and result.images[0]["top"]


# --- too small to judge ---------------------------------------------------------------------------


def test_images_too_small_to_judge_get_a_status_not_a_guess(model, tmp_path):
    bundle = jianmu.load_model(model)
    assert bundle.min_image_side == min(64, bundle.spec.input_size)  # the audit's rule, capped
    for side in (1, 8):
        write_image(tmp_path / "in" / f"tiny{side}.png", size=(side, side))
    write_image(tmp_path / "in" / "fine.png", size=(48, 40))
    result = jianmu.predict(settings(), bundle, [tmp_path / "in"])
    statuses = _statuses(result, tmp_path / "in")
    side = bundle.min_image_side
    assert statuses == {
        "fine.png": "ok",
        "tiny1.png": f"too small to judge (1x1 px; under {side} px)",
        "tiny8.png": f"too small to judge (8x8 px; under {side} px)",
    }
    assert all(not r["top"] and r["verdict"] is None for r in result.images if r["status"] != "ok")
