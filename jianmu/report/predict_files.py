"""Result files of ``jianmu predict``, by suffix, and reading them back for ``--resume``.

- ``.csv``: one row per image (columns :func:`csv_columns`; flags joined by ``"; "``), UTF-8 with
  a byte-order mark so that spreadsheet programs show Chinese names; specimens in
  ``<stem>.specimens.csv``.
- ``.jsonl``: one image record per line; specimens in ``<stem>.specimens.jsonl``.
- ``.json``: one document ``{"summary": ..., "specimens": [...], "images": [...]}``.

CSV and JSONL rows are appended and flushed as each batch completes, so an interrupted run leaves
every finished row on disk; the JSON document and the specimen files are written at the end (and
on Ctrl-C), each atomically (:func:`jianmu.files.atomic_write`). Reading tolerates a last
line cut short by a crash: it is dropped, and :class:`ResultWriter` cuts it off before appending.

The records are those of :mod:`jianmu.engine.predict`: an image record has ``path``,
``specimen``, ``status``, ``verdict``, ``rank``, ``taxon``, ``top`` (``class``, ``species``,
``probability``), ``other``, ``unknown_score``, ``threshold``, ``species``, ``chinese_name``,
``genus``, ``family``, ``flags``, ``possible_flags`` and ``evidence`` (per rank: ``taxon``,
``score``, ``threshold``; in CSV the columns ``<rank>_candidate``, ``<rank>_score``,
``<rank>_threshold``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from jianmu.errors import JianmuError
from jianmu.files import write_text_atomic
from jianmu.verdict import RANKS

FORMATS = (".csv", ".json", ".jsonl")
HEAD_COLUMNS = ("path", "specimen", "status", "verdict", "rank", "taxon")
NAME_COLUMNS = ("species", "chinese_name", "genus", "family", "flags", "possible_flags")
TAIL_COLUMNS = ("other", "unknown_score", "threshold", *NAME_COLUMNS, "quality_reasons")
EVIDENCE_COLUMNS = tuple(
    f"{rank}_{part}" for rank in RANKS for part in ("candidate", "score", "threshold")
)
DECISION_COLUMNS = ("declared", "decision", "reason", "consequence")
SPECIMEN_HEAD_COLUMNS = ("specimen", "images", "ok_images", "verdict", "rank", "taxon")
SPECIMEN_TAIL_COLUMNS = ("other", *NAME_COLUMNS)
LIST_COLUMNS = ("flags", "possible_flags")
FLAG_SEPARATOR = "; "
_TOP_COLUMN = re.compile(r"top(\d+)_(class|species|probability)")
_EVIDENCE_COLUMN = re.compile(rf"({'|'.join(RANKS)})_(candidate|score|threshold)")


def output_format(path: str | Path) -> str:
    """The format of an output path (its suffix), or a :class:`JianmuError` for another suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise JianmuError(f"--out {path}: use a .csv, .json or .jsonl file name")
    return suffix


def specimens_path(path: str | Path) -> Path:
    """Where the specimen rows of a CSV or JSONL output go: ``<stem>.specimens<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.specimens{path.suffix}")


def csv_columns(top_k: int, decisions: bool = False) -> list[str]:
    """The image columns; with ``decisions`` (verify), the declaration and its decision first."""
    judged = list(DECISION_COLUMNS) if decisions else []
    return [*HEAD_COLUMNS, *judged, *_top_columns(top_k), *TAIL_COLUMNS, *EVIDENCE_COLUMNS]


def specimen_columns(top_k: int, decisions: bool = False) -> list[str]:
    judged = list(DECISION_COLUMNS) if decisions else []
    return [*SPECIMEN_HEAD_COLUMNS, *judged, *_top_columns(top_k), *SPECIMEN_TAIL_COLUMNS]


def _top_columns(top_k: int) -> list[str]:
    return [
        f"top{i}_{part}"
        for i in range(1, top_k + 1)
        for part in ("class", "species", "probability")
    ]


def to_row(record: dict[str, Any], columns: list[str]) -> list[str]:
    """A record as CSV cells: None is empty, floats have 6 decimals, flags are joined."""
    top = record.get("top") or []
    cells = []
    for column in columns:
        match = _TOP_COLUMN.fullmatch(column)
        evidence = _EVIDENCE_COLUMN.fullmatch(column)
        if match:
            index, part = int(match.group(1)) - 1, match.group(2)
            value = top[index].get(part) if index < len(top) else None
        elif evidence:
            found = (record.get("evidence") or {}).get(evidence.group(1)) or {}
            value = found.get("taxon" if evidence.group(2) == "candidate" else evidence.group(2))
        elif column in LIST_COLUMNS:
            value = FLAG_SEPARATOR.join(record.get(column) or [])
        elif column == "quality_reasons":
            value = FLAG_SEPARATOR.join((record.get("quality") or {}).get("reasons") or [])
        else:
            value = record.get(column)
        cells.append(_cell(value))
    return cells


def from_row(row: dict[str, str]) -> dict[str, Any]:
    """An image record from a CSV row written by :func:`to_row` (any ``top_k``)."""
    top: dict[int, dict[str, Any]] = {}
    for column, value in row.items():
        match = _TOP_COLUMN.fullmatch(column or "")
        if match:
            top.setdefault(int(match.group(1)), {})[match.group(2)] = value
    entries = []
    for _, entry in sorted(top.items()):
        if entry.get("class"):
            entries.append({
                "class": entry["class"],
                "species": entry.get("species") or None,
                "probability": float(entry.get("probability") or 0.0),
            })  # fmt: skip
    evidence = {}
    for rank in RANKS:
        if row.get(f"{rank}_threshold"):
            evidence[rank] = {
                "taxon": row.get(f"{rank}_candidate") or None,
                "score": _float(row.get(f"{rank}_score")),
                "threshold": _float(row.get(f"{rank}_threshold")),
            }
    return {
        "path": row["path"],
        "specimen": row.get("specimen") or None,
        "status": row.get("status") or "ok",
        "verdict": row.get("verdict") or None,
        "rank": row.get("rank") or None,
        "taxon": row.get("taxon") or None,
        "top": entries,
        "other": _float(row.get("other")),
        "unknown_score": _float(row.get("unknown_score")),
        "threshold": _float(row.get("threshold")),
        "species": row.get("species") or None,
        "chinese_name": row.get("chinese_name") or None,
        "genus": row.get("genus") or None,
        "family": row.get("family") or None,
        **{column: _list(row.get(column)) for column in LIST_COLUMNS},
        "evidence": evidence,
        "quality": (
            {"reasons": _list(row.get("quality_reasons")), "measures": {}}
            if row.get("status") in ("ok", "retake") and "quality_reasons" in row
            else None
        ),
        **{column: row[column] or None for column in DECISION_COLUMNS if column in row},
    }


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The image records of an existing output (for ``--resume``); a cut-short last line is
    dropped.

    Raises:
        JianmuError: the file is not a ``jianmu predict`` output of its suffix's format.
    """
    path = Path(path)
    suffix = output_format(path)
    try:
        data = path.read_bytes()
        text = (data if suffix == ".json" else _complete_lines(data)).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise JianmuError(f"--resume: cannot read {path} ({error})") from None
    try:
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is None:
                return []
            if "path" not in reader.fieldnames:
                raise ValueError("no 'path' column")
            return [from_row(row) for row in reader if row.get("path")]
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if not text.strip():
            return []
        return list(json.loads(text)["images"])
    except (ValueError, KeyError, TypeError) as error:
        raise JianmuError(
            f"--resume: {path} is not a jianmu predict output ({error}); move it away or drop "
            f"--resume"
        ) from None


def read_csv_header(path: str | Path) -> list[str] | None:
    """The header of an existing CSV output, or None when the file is empty."""
    with open(path, encoding="utf-8-sig", newline="") as stream:
        return next(csv.reader(stream), None)


class ResultWriter:
    """Writes image records to ``path`` as they come (``.csv``/``.jsonl``), or keeps nothing and
    writes the whole document in :meth:`finish` (``.json``).

    Args:
        append: continue an existing file (``--resume``): rows go after its last complete line.
    """

    def __init__(
        self, path: str | Path, top_k: int, append: bool = False, decisions: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        self.columns = csv_columns(top_k, decisions)
        self.decisions = decisions
        self.top_k = top_k
        self._stream = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == ".json":
                return
            if append and self.path.exists():
                _truncate_partial_line(self.path)
                append = self.path.stat().st_size > 0
            if append:
                self._check_header()
                self._stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
            else:
                encoding = "utf-8-sig" if self.format == ".csv" else "utf-8"
                self._stream = open(self.path, "w", encoding=encoding, newline="")  # noqa: SIM115
                if self.format == ".csv":
                    self._write_text(_csv_text([self.columns]))
        except OSError as error:
            raise JianmuError(f"cannot write {self.path}: {error.strerror or error}") from None

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append the rows of ``records`` in one write, then flush (nothing for ``.json``)."""
        if self._stream is None or not records:
            return
        if self.format == ".csv":
            text = _csv_text([to_row(record, self.columns) for record in records])
        else:
            text = "".join(_json_line(record) for record in records)
        self._write_text(text)

    def finish(
        self,
        images: list[dict[str, Any]],
        specimens: list[dict[str, Any]],
        summary: dict[str, Any],
    ) -> list[Path]:
        """Close the rows and write the specimen file or the JSON document; the paths written.

        ``images`` is only read for ``.json`` (every record of the output, resumed ones first).
        """
        self.close()
        if self.format == ".json":
            document = {"summary": summary, "specimens": specimens, "images": images}
            write_text_atomic(self.path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
            return [self.path]
        extra = specimens_path(self.path)
        if self.format == ".csv":
            columns = specimen_columns(self.top_k, self.decisions)
            rows = [columns, *[to_row(specimen, columns) for specimen in specimens]]
            write_text_atomic(extra, _csv_text(rows), encoding="utf-8-sig")
        else:
            write_text_atomic(extra, "".join(_json_line(specimen) for specimen in specimens))
        return [self.path, extra]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _write_text(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError as error:
            raise JianmuError(f"cannot write {self.path}: {error.strerror or error}") from None

    def _check_header(self) -> None:
        if self.format != ".csv":
            return
        header = read_csv_header(self.path)
        if header is not None and header != self.columns:
            top = sum(1 for column in header if column.endswith("_probability"))
            raise JianmuError(
                f"--resume: {self.path} has other columns (written with --top-k {top}?); use the "
                f"same options or another --out"
            )


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _list(text: str | None) -> list[str]:
    return text.split(FLAG_SEPARATOR) if text else []


def _float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _complete_lines(data: bytes) -> bytes:
    """``data`` up to its last newline (all of it when it ends with one)."""
    if not data or data.endswith(b"\n"):
        return data
    return data[: data.rfind(b"\n") + 1]


def _truncate_partial_line(path: Path) -> None:
    data = path.read_bytes()
    keep = len(_complete_lines(data))
    if keep < len(data):
        with open(path, "rb+") as stream:
            stream.truncate(keep)
