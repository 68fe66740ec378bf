"""The CLI through typer's CliRunner: exit codes, one-line errors, no tracebacks."""

import csv
import json

from conftest import REPO
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.taxonomy import load_taxonomy

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, text):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_version_and_help():
    assert invoke("--version").output.startswith("jianmu ")
    result = invoke("--help")
    assert result.exit_code == 0
    assert "taxonomy" in result.output and "data" in result.output


def test_taxonomy_show_search(tiny_taxonomy_path):
    result = invoke("taxonomy", "show", tiny_taxonomy_path, "--search", "cassia")
    assert result.exit_code == 0, result.output
    assert "Senna siamea" in result.output and "Tectona" not in result.output
    assert "1 of 4 species" in result.output


def test_taxonomy_show_flagged_only(tiny_taxonomy_path):
    result = invoke("taxonomy", "show", tiny_taxonomy_path, "--flagged")
    assert "tucurensis" in result.output and "Senna" in result.output
    assert "Tectona" not in result.output


def test_taxonomy_check_matches_folders(tiny_taxonomy_path, tmp_path):
    root = tmp_path / "data"
    for name in ["1-Dalbergia_tucurensis", "5-Cassia_siamea"]:
        (root / name).mkdir(parents=True)
    result = invoke("taxonomy", "check", tiny_taxonomy_path, root)
    assert result.exit_code == 0, result.output
    assert "2 of 2 folders matched" in result.output
    (root / "Teak").mkdir()
    result = invoke("taxonomy", "check", tiny_taxonomy_path, root)
    assert result.exit_code == 1
    assert "not found" in result.output


def test_user_errors_are_one_red_line(tmp_path):
    assert_one_line_error(invoke("taxonomy", "show", "wod"), "did you mean 'wood'")
    assert_one_line_error(
        invoke("taxonomy", "check", "wood", tmp_path / "missing"), str(tmp_path / "missing")
    )


def test_data_synth_check_split_preview(tmp_path):
    root = tmp_path / "data"
    result = invoke("data", "synth", root, "--classes", 3, "--per-class", 8, "--size", 64)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(folders) == 3
    assert load_taxonomy("wood").match(folders[0]).entry is not None  # real species names

    audit_json = tmp_path / "audit.json"
    result = invoke(
        "data", "check", root, "--json", audit_json, "--set", "data.min_images_per_class=4"
    )
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC dataset" in result.output and "no blocking problems" in result.output
    audit = json.loads(audit_json.read_text())
    assert audit["ok"] and audit["synthetic"] and audit["num_files"] == 24
    assert sorted(c["name"] for c in audit["classes"]) == folders

    manifest = tmp_path / "manifest.csv"
    result = invoke("data", "split", root, "--out", manifest, "--seed", 7)
    assert result.exit_code == 0, result.output
    assert "leak-free" in result.output
    with open(manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["path", "class", "specimen", "split", "sha256"]
    assert len(rows) == 24 and {r["split"] for r in rows} == {"train", "val", "test"}
    specimen_splits = {}
    for row in rows:
        specimen_splits.setdefault(row["specimen"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in specimen_splits.values())

    png = tmp_path / "preview.png"
    config = REPO / "configs" / "wood.yaml"
    result = invoke("data", "preview", config, root, "--out", png, "--images", 2, "--per-image", 2)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_check_exits_1_on_blocking_problems(tmp_path):
    root = tmp_path / "data"
    invoke("data", "synth", root, "--classes", 2, "--per-class", 4, "--size", 48, "--generic-names")
    (root / "synthetic_class_01" / "s01" / "broken.jpg").write_bytes(b"")
    result = invoke("data", "check", root, "--json", tmp_path / "a.json", "--no-taxonomy")
    assert result.exit_code == 1, result.output
    assert "blocking" in result.output and "zero-byte" in result.output
    assert (root / "synthetic_class_01" / "s01" / "broken.jpg").exists()  # nothing modified


def test_data_commands_user_errors(tmp_path):
    assert_one_line_error(invoke("data", "check", tmp_path / "missing"), "not found")
    assert_one_line_error(
        invoke("data", "split", tmp_path / "missing", "--out", tmp_path / "m.csv"), "not found"
    )
    real = tmp_path / "real"
    (real / "Tectona_grandis").mkdir(parents=True)
    (real / "Tectona_grandis" / "photo.jpg").write_bytes(b"not really")
    result = invoke("data", "synth", real, "--classes", 2)
    assert_one_line_error(result, str(real))
    assert (real / "Tectona_grandis" / "photo.jpg").read_bytes() == b"not really"
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("augment:\n  hflp: true\n")
    assert_one_line_error(invoke("data", "preview", bad_config, real), "did you mean 'hflip'")
