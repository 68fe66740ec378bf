"""`jianmu data import`: reviewed photos copied into a data set, a specimen whole or not at all,
never over a file, never a duplicate, every copy in the provenance log; on synthetic sets
(no model needed: the review CSV is written here with the columns `jianmu review` writes)."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tiny import settings
from typer.testing import CliRunner

from jianmu.cli import app
from jianmu.data import importer
from jianmu.data.importer import (
    IMPORTS_LOG,
    REVIEW_COLUMNS,
    find_near_duplicates,
    import_reviewed,
)
from jianmu.data.samples import find_dataset, find_samples
from jianmu.data.synth import generate_dataset
from jianmu.errors import JianmuError
from jianmu.record import file_sha256

DATA_CLASSES = ["Dalbergia_odorifera", "Senna_siamea"]
FIELD_CLASSES = ["Dalbergia_odorifera", "Senna_siamea", "Tectona_grandis"]
SOURCE = {"predictions": "/lab/run/predictions.csv", "run": "ab" * 32, "model": "model.onnx",
          "model_sha256": "cd" * 32}  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    """A two-class data set (the template) and field photos of three classes (another seed)."""
    base = tmp_path_factory.mktemp("sets")
    generate_dataset(
        base / "data", "wood", classes=2, per_class=6, size=48, specimens_per_class=2, seed=4,
        class_names=DATA_CLASSES,
    )  # fmt: skip
    generate_dataset(
        base / "field", "wood", classes=3, per_class=4, size=48, specimens_per_class=2, seed=9,
        class_names=FIELD_CLASSES,
    )  # fmt: skip
    return base / "data", base / "field"


@pytest.fixture
def data(sets, tmp_path) -> Path:
    """A fresh copy of the data set for each test (imports change it)."""
    return Path(shutil.copytree(sets[0], tmp_path / "data"))


@pytest.fixture
def field(sets) -> dict[str, Path]:
    """Field photos by short name: ``T1a`` is the first photo of Tectona_grandis specimen s01."""
    photos = {}
    for path in sorted(sets[1].rglob("*.jpg")):
        cls, specimen = path.parent.parent.name, path.parent.name
        photos[f"{cls[0]}{specimen[-1]}{'ab'[int(path.stem[-1]) - 1]}"] = path
    return photos


def _write(path: Path, rows: list[dict]) -> Path:
    """A reviewed CSV: the columns of `jianmu review`, as the expert filled them in."""
    with open(path, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: "" for column in REVIEW_COLUMNS} | SOURCE | row)
    return path


def _row(photo: Path, specimen: str | None, taxon: str, reviewer: str = "Dr. Li", **more) -> dict:
    return {"path": str(photo), "specimen": specimen or "", "reviewed_taxon": taxon,
            "reviewer": reviewer if taxon else "", **more}  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) -> its SHA-256."""
    return {
        path.relative_to(root).as_posix(): file_sha256(path)
        for path in root.rglob("*")
        if path.is_file()
    }


def _log(root: Path) -> list[dict]:
    path = root / IMPORTS_LOG
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_specimens_are_copied_whole_into_the_matched_class_folders(data, field, tmp_path):
    before = _snapshot(data)
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["S1a"], "S01", "Cassia siamea", note="rays storied"),  # a synonym
        _row(field["S1b"], "S01", "Senna siamea"),  # the accepted name: the same species
        _row(field["T1a"], "field/T-7", "柚木"),  # a Chinese name; a species new to the set
        _row(field["T1b"], "field/T-7", "Teak"),  # and its trade name
        _row(field["D2a"], None, "Dalbergia odorifera"),  # a photo of no specimen
    ])  # fmt: skip
    result = import_reviewed(settings(), reviewed, data)
    assert result.ok and result.refused == [] and result.files == 5
    assert [(s.specimen, s.taxon, s.folder.as_posix(), s.new_class) for s in result.imported] == [
        ("S01", "Senna siamea", "Senna_siamea/S01", False),
        ("field/T-7", "Tectona grandis", "Tectona_grandis/field_T-7", True),
        (None, "Dalbergia odorifera", "Dalbergia_odorifera", False),
    ]
    after = _snapshot(data)
    assert {name: after[name] for name in before} == before  # nothing there before was touched
    added = sorted(set(after) - set(before))
    assert added == sorted([
        IMPORTS_LOG,
        f"Senna_siamea/S01/{field['S1a'].name}",
        f"Senna_siamea/S01/{field['S1b'].name}",
        f"Tectona_grandis/field_T-7/{field['T1a'].name}",
        f"Tectona_grandis/field_T-7/{field['T1b'].name}",
        f"Dalbergia_odorifera/{field['D2a'].name}",
    ])  # fmt: skip
    for photo in ("S1a", "S1b", "T1a", "T1b", "D2a"):  # copied, not moved: bytes and times kept
        source = field[photo]
        copy = next(data.rglob(source.name))
        assert source.is_file() and copy.read_bytes() == source.read_bytes()
        assert copy.stat().st_mtime == source.stat().st_mtime
    # the data set's own specimen rule sees each imported specimen as one, and a new one
    specimens = {sample.specimen for sample in find_samples(data, [".jpg"]) if "S01" in str(
        sample.path) or "T-7" in str(sample.path)}  # fmt: skip
    assert specimens == {"Senna_siamea/S01", "Tectona_grandis/field_T-7"}

    log = _log(data)
    assert len(log) == 5
    first = log[0]
    assert first["reviewer"] == "Dr. Li" and first["taxon"] == "Senna siamea"
    assert first["reviewed_as"] == "Cassia siamea" and first["note"] == "rays storied"
    assert first["destination"] == f"Senna_siamea/S01/{field['S1a'].name}"
    assert first["source"] == str(field["S1a"]) and first["sha256"] == file_sha256(field["S1a"])
    assert first["imported"].endswith("Z") and first["reviewed_csv_sha256"] == file_sha256(reviewed)
    for entry in log:
        assert {key: entry[key] for key in SOURCE} == SOURCE
        assert file_sha256(data / entry["destination"]) == entry["sha256"]


def test_blank_rows_are_skipped_and_counted_and_half_named_specimens_refused(data, field, tmp_path):
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["S1a"], "S01", ""),
        _row(field["S1b"], "S01", ""),
        _row(field["D1a"], "D01", "Dalbergia odorifera"),
        _row(field["D1b"], "D01", ""),
        _row(field["T2a"], None, "   "),
    ])  # fmt: skip
    before = _snapshot(data)
    result = import_reviewed(settings(), reviewed, data)
    assert result.blank_rows == 3 and result.imported == [] and result.log is None
    assert [(r.unit, r.lines) for r in result.refused] == [("specimen D01", [4, 5])]
    assert "1 of 2 photos named" in result.refused[0].reason
    assert _snapshot(data) == before


def test_a_specimen_named_two_ways_is_refused_whole(data, field, tmp_path):
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["S1a"], "S01", "Senna siamea"),
        _row(field["S1b"], "S01", "Tectona grandis"),
        _row(field["T1a"], "T01", "Tectona grandis"),
    ])  # fmt: skip
    result = import_reviewed(settings(), reviewed, data)
    assert [(r.unit, r.lines) for r in result.refused] == [("specimen S01", [2, 3])]
    assert "named differently (Senna siamea, Tectona grandis)" in result.refused[0].reason
    assert [s.specimen for s in result.imported] == ["T01"]
    assert not (data / "Senna_siamea" / "S01").exists()  # nothing of it copied
    assert [entry["specimen"] for entry in _log(data)] == ["T01"]


def test_names_outside_the_taxonomy_are_refused_with_the_closest_names(data, field, tmp_path):
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["D1a"], "D01", "Dalbergia odorifer"),
        _row(field["D2a"], "D02", "Bubinga"),  # a trade name of several species
        _row(field["S1a"], "S01", "Senna siamea", reviewer=""),
    ])  # fmt: skip
    result = import_reviewed(settings(), reviewed, data)
    reasons = {refusal.unit: refusal.describe() for refusal in result.refused}
    assert reasons["specimen D01"] == (
        "specimen D01 (line 2): 'Dalbergia odorifer' is not in the wood taxonomy "
        "(closest: Dalbergia odorifera, Dalbergia oliveri, Dalbergia nigra)"
    )
    assert "'Bubinga' is ambiguous" in reasons["specimen D02"]
    assert "Guibourtia" in reasons["specimen D02"]
    assert "no reviewer" in reasons["specimen S01"]
    assert result.imported == [] and not (data / IMPORTS_LOG).exists()

    cli = runner.invoke(app, ["data", "import", str(reviewed), "--into", str(data)])
    assert cli.exit_code == 1, cli.output
    lines = [line for line in cli.output.splitlines() if line.startswith("refused:")]
    assert len(lines) == 3 and "closest: Dalbergia odorifera" in lines[0]


def test_duplicates_of_the_data_set_and_of_each_other_are_refused(data, field, tmp_path):
    inside = sorted((data / "Senna_siamea").rglob("*.jpg"))
    exact = shutil.copy(inside[0], tmp_path / "exact copy.jpg")
    near = tmp_path / "re-encoded.jpg"
    Image.open(inside[1]).save(near, quality=60)  # other bytes, the same picture
    assert file_sha256(near) != file_sha256(inside[1])
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["S1a"], "S01", "Senna siamea"),
        _row(exact, "S01", "Senna siamea"),
        _row(near, None, "Senna siamea"),
        _row(field["T1a"], "T01", "Tectona grandis"),
        _row(field["T1a"], "T02", "Tectona grandis"),  # the same photo under two specimens
        _row(field["D1a"], "D01", "Dalbergia odorifera"),
    ])  # fmt: skip
    before = _snapshot(data)
    result = import_reviewed(settings(), reviewed, data)
    reasons = {refusal.unit: refusal.reason for refusal in result.refused}
    relative = inside[0].relative_to(data).as_posix()
    assert reasons["specimen S01"] == f"exact copy.jpg is already in the data set as {relative}"
    assert reasons["photo re-encoded.jpg"].startswith(
        f"re-encoded.jpg is a near duplicate of {inside[1].relative_to(data).as_posix()}"
    )
    assert reasons["specimen T01"] == f"{field['T1a'].name} is the same photo as line 6"
    assert reasons["specimen T02"] == f"{field['T1a'].name} is the same photo as line 5"
    assert [s.specimen for s in result.imported] == ["D01"]
    assert set(_snapshot(data)) - set(before) == {
        IMPORTS_LOG, f"Dalbergia_odorifera/D01/{field['D1a'].name}"
    }  # fmt: skip

    relaxed = settings("review.refuse_near_duplicates=false")
    again = import_reviewed(
        relaxed, _write(tmp_path / "near.csv", [_row(near, None, "Senna")]), data
    )
    assert again.refused[0].reason.startswith("'Senna' is not in the wood taxonomy")
    again = import_reviewed(
        relaxed, _write(tmp_path / "near.csv", [_row(near, None, "Senna siamea")]), data
    )
    assert again.ok and again.files == 1  # only exact copies refused now


def test_nothing_is_overwritten_clashing_names_get_the_next_free_one(data, field, tmp_path):
    # the data set has Senna_siamea/s01 and a file named like the photo of no specimen
    clash = data / "Senna_siamea" / field["S2b"].name
    shutil.copy(field["D2b"], clash)  # other content, same name
    before = _snapshot(data)
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["S1a"], "s01", "Senna siamea"),
        _row(field["S1b"], "s01", "Senna siamea"),
        _row(field["S2b"], None, "Senna siamea"),
        _row(field["S2a"], "s01", "Senna siamea"),  # ... and another field run's s01
    ])  # fmt: skip
    result = import_reviewed(settings(), reviewed, data)
    assert result.ok
    folders = [s.folder.as_posix() for s in result.imported]
    assert folders == ["Senna_siamea/s01-2", "Senna_siamea"]
    lone = result.imported[1]
    assert lone.files[0].destination.name == f"{field['S2b'].stem}-2.jpg"
    assert "is taken" in lone.notes[0]
    after = _snapshot(data)
    assert {name: after[name] for name in before} == before
    assert clash.read_bytes() == field["D2b"].read_bytes()
    # the two rows of specimen s01 and the later one are the same specimen: kept together
    assert sorted(p.name for p in (data / "Senna_siamea" / "s01-2").iterdir()) == sorted(
        field[name].name for name in ("S1a", "S1b", "S2a")
    )


def test_what_was_imported_before_is_skipped(data, field, tmp_path):
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["T1a"], "T01", "Tectona grandis"),
        _row(field["T1b"], "T01", "Tectona grandis"),
        _row(field["T2a"], "T02", "Tectona grand"),
    ])  # fmt: skip
    first = import_reviewed(settings(), reviewed, data)
    assert first.files == 2 and len(first.refused) == 1
    corrected = _write(tmp_path / "corrected.csv", [
        _row(field["T1a"], "T01", "Tectona grandis"),
        _row(field["T1b"], "T01", "Tectona grandis"),
        _row(field["T2a"], "T02", "Tectona grandis"),
    ])  # fmt: skip
    second = import_reviewed(settings(), corrected, data)
    assert second.ok and second.already_imported == 2
    assert [s.specimen for s in second.imported] == ["T02"]
    assert [entry["specimen"] for entry in _log(data)] == ["T01", "T01", "T02"]
    # the log is part of the data set: the audit does not count it as a stray file
    assert (data / IMPORTS_LOG) not in find_dataset(data, [".jpg"]).skipped
    # a specimen of which only a part was imported before is refused, not split
    part = _write(tmp_path / "part.csv", [
        _row(field["T2a"], "T02", "Tectona grandis"),
        _row(field["T2b"], "T02", "Tectona grandis"),
    ])  # fmt: skip
    third = import_reviewed(settings(), part, data)
    assert "was imported before" in third.refused[0].reason and third.imported == []


def test_dry_run_copies_and_logs_nothing(data, field, tmp_path):
    reviewed = _write(tmp_path / "reviewed.csv", [_row(field["T1a"], "T01", "Tectona grandis")])
    before = _snapshot(data)
    result = import_reviewed(settings(), reviewed, data, dry_run=True)
    assert result.dry_run and result.files == 1 and result.log is None
    assert result.imported[0].folder.as_posix() == "Tectona_grandis/T01"
    assert _snapshot(data) == before and not (data / "Tectona_grandis").exists()
    cli = runner.invoke(app, ["data", "import", str(reviewed), "--into", str(data), "--dry-run"])
    assert cli.exit_code == 0 and "would copy 1 photo(s) of 1 specimen(s)" in cli.output
    assert _snapshot(data) == before
    cli = runner.invoke(app, ["data", "import", str(reviewed), "--into", str(data)])
    assert cli.exit_code == 0 and "copied 1 photo(s)" in cli.output, cli.output
    assert "provenance appended" in cli.output


def test_a_copy_failing_half_way_leaves_nothing_behind(data, field, tmp_path, monkeypatch):
    reviewed = _write(tmp_path / "reviewed.csv", [
        _row(field["T1a"], "T01", "Tectona grandis"),
        _row(field["T1b"], "T01", "Tectona grandis"),
        _row(field["S1a"], "S01", "Senna siamea"),
    ])  # fmt: skip
    before = _snapshot(data)
    folders = sorted(path for path in data.rglob("*") if path.is_dir())
    real_copy = shutil.copy2
    calls = []

    def failing_copy(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(source, target)

    monkeypatch.setattr(importer.shutil, "copy2", failing_copy)
    with pytest.raises(JianmuError, match="No space left on device.*nothing was imported"):
        import_reviewed(settings(), reviewed, data)
    assert _snapshot(data) == before
    assert sorted(path for path in data.rglob("*") if path.is_dir()) == folders


def test_the_data_sets_specimen_pattern_is_respected(data, field, tmp_path):
    # under a file-name rule, the photo of no specimen 'synth_Senna_siamea_s01_01.jpg' would
    # join the data set's specimen s01 of Senna siamea: refused
    config = settings(r"data.specimen_pattern=_(s\d\d)_")
    reviewed = _write(tmp_path / "reviewed.csv", [_row(field["S1a"], None, "Senna siamea")])
    result = import_reviewed(config, reviewed, data)
    assert "part of the specimen Senna_siamea/s01 already in the data set" in (
        result.refused[0].reason
    )
    assert import_reviewed(settings(), reviewed, data).ok  # without the rule: its own specimen


def test_bad_files_are_one_line_errors(data, field, tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,name\na.jpg,Teak\n", encoding="utf-8")
    with pytest.raises(JianmuError, match="no column path, specimen, reviewed_taxon, reviewer"):
        import_reviewed(settings(), wrong, data)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,specimen,reviewed_taxon,reviewer\na.jpg,,Pterocarpus,Jos\xe9\n".encode(
        "latin-1"))  # fmt: skip
    with pytest.raises(JianmuError, match="save it as 'CSV UTF-8'"):
        import_reviewed(settings(), latin, data)
    reviewed = _write(tmp_path / "reviewed.csv", [_row(tmp_path / "gone.jpg", "X", "Teak")])
    result = import_reviewed(settings(), reviewed, data)
    assert result.refused[0].reason.endswith("gone.jpg: not found")
    cli = runner.invoke(app, ["data", "import", str(reviewed), "--into", str(tmp_path / "none")])
    assert cli.exit_code == 2 and cli.output.strip().startswith("error: --into")
    assert "Traceback" not in cli.output and len(cli.output.strip().splitlines()) == 1


def test_near_duplicates_match_a_brute_force_search():
    generator = random.Random(3)
    existing = [generator.getrandbits(64) for _ in range(300)] + [None]
    new = [value ^ (1 << generator.randrange(64)) for value in existing[:20]]  # one bit away
    new += [generator.getrandbits(64) for _ in range(40)] + [existing[5], None]
    for distance in (0, 2, 6):
        expected = {}
        for index, value in enumerate(new):
            if value is None:
                continue
            found = [
                ((value ^ other).bit_count(), position)
                for position, other in enumerate(existing)
                if other is not None and (value ^ other).bit_count() <= distance
            ]
            if found:
                hamming, position = min(found)
                expected[index] = (position, hamming)
        assert find_near_duplicates(existing, new, distance) == expected
