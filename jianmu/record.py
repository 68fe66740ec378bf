"""The inspection record: what a predict or verify run saw, with what, and what it decided.

Every run writes ``<stem>.record.json`` beside its output: each input's SHA-256, the model's
SHA-256 and metadata, the jianmu and runtime versions, the settings in force, time, host, the
operator and device labels, and the decisions. The record carries ``record_sha256``, the SHA-256
of the canonical JSON of everything else in it (keys sorted, no spaces, UTF-8), so re-indenting
or re-ordering the file changes nothing, while changing any value does. :func:`check_record`
recomputes that hash and re-hashes the inputs and the model.

The hash shows that a record and its files are unchanged since; it is not a signature: someone
who edits a record can seal it again. Keep the hash (it is printed by ``jianmu record check``)
in the case file to tie a record to a case.

Standard library and numpy only: the ONNX prediction path (no torch) writes records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import platform
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from jianmu import __version__
from jianmu.errors import JianmuError
from jianmu.files import write_text_atomic

FORMAT = "jianmu.record/1"
COMMANDS = ("predict", "verify")
HASH_KEY = "record_sha256"
_CHUNK = 1 << 20
# Distribution names to ask importlib.metadata when the module is not imported yet.
_DISTRIBUTIONS = {
    "PIL": ("pillow",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                    "onnxruntime-openvino"),
}  # fmt: skip


# --- hashes ---------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_sha256(path: str | Path) -> str:
    """The SHA-256 of a model file; for a folder (a run folder), of the checkpoints in it.

    A folder's hash is the SHA-256 of the UTF-8 lines ``"<name>\\t<file sha256>\\n"`` of its
    ``*.safetensors`` files (the folder's own, not its sub-folders'), sorted by name: the same
    checkpoints give the same hash wherever the folder lies, and the logs, plots and configs
    beside them do not count.
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    lines = sorted(f"{file.name}\t{file_sha256(file)}\n" for file in path.glob("*.safetensors"))
    return bytes_sha256("".join(lines).encode("utf-8"))


# --- building and sealing -------------------------------------------------------------------------


def runtime_versions() -> dict[str, str | None]:
    """Python, the platform and the versions of the libraries a run uses (None: not installed).

    torch is listed only when something already imported it: asking would import it, and the
    ONNX path never does.
    """
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jianmu": __version__,
        "numpy": np.__version__,
        "opencv": _module_version("cv2", import_it=True),  # the predict path imports it anyway
        "pillow": _module_version("PIL"),
        "onnxruntime": _module_version("onnxruntime"),
    }
    if "torch" in sys.modules:
        versions["torch"] = getattr(sys.modules["torch"], "__version__", None)
    return versions


def _module_version(module: str, import_it: bool = False) -> str | None:
    """The ``__version__`` of a module already imported (or, with ``import_it``, importable),
    else the version of its installed distribution."""
    if module not in sys.modules and import_it:
        try:
            __import__(module)
        except Exception:  # a broken install is recorded as absent, not a failed run
            return None
    if module in sys.modules:
        version = getattr(sys.modules[module], "__version__", None)
        if isinstance(version, str):
            return version
    for name in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def input_entry(path: str | Path, sha256: str | None, size: int | None) -> dict[str, Any]:
    """One input as the record lists it (``sha256`` and ``size`` None: it could not be read)."""
    return {"path": str(path), "abs": str(Path(path).resolve()), "sha256": sha256, "bytes": size}


def upload_entry(name: str, sha256: str | None, size: int | None) -> dict[str, Any]:
    """One input that came as bytes, not as a file (``jianmu serve``): ``name`` is the client's
    label, never looked up on this machine, so ``abs`` is None (:func:`check_record` then looks
    for the photo by ``name`` beside the record)."""
    return {"path": name, "abs": None, "sha256": sha256, "bytes": size}


def build_record(
    *,
    command: str,
    model_path: str | Path,
    model_info: Mapping[str, Any],
    settings: Mapping[str, Any],
    inputs: list[dict[str, Any]],
    images: list[Any],
    specimens: list[Any],
    summary: Mapping[str, Any],
    operator: str | None = None,
    device: str | None = None,
    created: dt.datetime | str | None = None,
    host: str | None = None,
    model_hash: str | None = None,
) -> dict[str, Any]:
    """The sealed record of a run (see :func:`seal`); hashes the model (the inputs come hashed).

    Args:
        command: ``"predict"`` or ``"verify"``.
        model_path: the model as given on the command line.
        model_info: the model's metadata to keep (format, metadata version, classes, ...);
            ``path``, ``abs`` and ``sha256`` are the record's own and win over it.
        settings: the thresholds and rules in force.
        inputs: one :func:`input_entry` per input file.
        created: when the run was (default: now); a naive datetime is taken as UTC.
        model_hash: the model's :func:`model_sha256`, when already known (a server hashes its
            models once, not per request).
    """
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: expected one of {COMMANDS}")
    model_path = Path(model_path)
    content = {
        "format": FORMAT,
        "command": command,
        "created": _timestamp(created),
        "host": socket.gethostname() if host is None else host,
        "operator": operator,
        "device": device,
        "jianmu": __version__,
        "runtime": runtime_versions(),
        "model": {
            **model_info,
            "path": str(model_path),
            "abs": str(model_path.resolve()),
            "sha256": model_hash or model_sha256(model_path),
        },
        "settings": settings,
        "inputs": inputs,
        "images": images,
        "specimens": specimens,
        "summary": summary,
    }
    return seal(content)


def _timestamp(created: dt.datetime | str | None) -> str:
    """ISO 8601 in UTC to the second, ``2025-01-31T09:30:00Z``."""
    if isinstance(created, str):
        return created
    if created is None:
        created = dt.datetime.now(dt.timezone.utc)
    elif created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    return created.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seal(content: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` as plain JSON data plus ``record_sha256``, the SHA-256 of its canonical JSON.

    numpy scalars and arrays become numbers and lists, paths strings, tuples lists, and NaN or
    infinite numbers None (JSON has none), so that what is written is exactly what was hashed.
    A ``record_sha256`` already in ``content`` is replaced.
    """
    plain = _plain({key: value for key, value in content.items() if key != HASH_KEY})
    return {**plain, HASH_KEY: _content_sha256(plain)}


def json_data(value: Any) -> Any:
    """``value`` as plain JSON data, as :func:`seal` converts it (NaN and infinities: None)."""
    return _plain(value)


def _content_sha256(content: Mapping[str, Any], allow_nan: bool = False) -> str:
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
    )
    return bytes_sha256(text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """``value`` as JSON data: dicts with string keys, lists, strings, finite numbers, None."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"a record holds JSON data; got {type(value).__name__}: {value!r}")


# --- files ----------------------------------------------------------------------------------------


def record_path(out: str | Path) -> Path:
    """Where the record of a run whose output is ``out`` goes: ``results.csv`` ->
    ``results.record.json`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.record.json")


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a sealed record (atomically, indented: the hash is over the parsed content)."""
    if HASH_KEY not in record:
        raise ValueError("seal the record before writing it")
    text = json.dumps(_plain(record), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def load_record(path: str | Path) -> dict[str, Any]:
    """A record file's content; JianmuError when it is unreadable, not JSON or not a record."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise JianmuError(f"cannot read record {path}: {error.strerror or error}") from None
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise JianmuError(f"{path}: not a jianmu record (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise JianmuError(
            f"{path}: not a jianmu record (not JSON: {error.msg}, line {error.lineno})"
        ) from None
    found = record.get("format") if isinstance(record, dict) else None
    if not isinstance(found, str) or not found.startswith("jianmu.record/"):
        raise JianmuError(f"{path}: not a jianmu record (no 'format': {FORMAT!r})")
    if found != FORMAT:
        raise JianmuError(f"{path}: record format {found!r}; this jianmu reads {FORMAT!r}")
    if not isinstance(record.get(HASH_KEY), str):
        raise JianmuError(f"{path}: the record has no '{HASH_KEY}' to check it against")
    return record


# --- checking -------------------------------------------------------------------------------------


@dataclass
class RecordCheck:
    """What :func:`check_record` found. A model that is not here to re-hash is a note (the record
    may have travelled without it); a changed model, input or record is a failure."""

    path: Path
    record_sha256: str
    record_intact: bool
    command: str | None
    created: str | None
    inputs_checked: int = 0
    inputs_changed: list[str] = field(default_factory=list)
    inputs_missing: list[str] = field(default_factory=list)
    inputs_unhashed: list[str] = field(default_factory=list)
    """Inputs the run could not read: there is no hash to compare them with."""
    model_path: str | None = None
    model_changed: bool | None = None
    """None: the model is not here to check."""

    @property
    def ok(self) -> bool:
        return (
            self.record_intact
            and not self.inputs_changed
            and not self.inputs_missing
            and self.model_changed is not True
        )

    def lines(self) -> list[str]:
        """The findings, one sentence each: changes first, the tally last."""
        lines = [f"{self.command} run of {self.created}: {self.path}"]
        if self.record_intact:
            lines.append(f"record intact (sha256 {self.record_sha256})")
        else:
            lines.append("record ALTERED: its content does not match its hash")
        lines += [f"input changed since: {path}" for path in self.inputs_changed]
        lines += [f"input missing: {path}" for path in self.inputs_missing]
        if self.model_changed is True:
            lines.append(f"model changed since: {self.model_path}")
        elif self.model_changed is None:
            lines.append(f"model not here to check: {self.model_path}")
        else:
            lines.append(f"model unchanged: {self.model_path}")
        if self.inputs_unhashed:
            lines.append(
                f"{_count(len(self.inputs_unhashed), 'input')} unreadable when recorded, "
                "not checked"
            )
        bad = len(self.inputs_changed) + len(self.inputs_missing)
        tally = f"{_count(self.inputs_checked, 'input')} re-hashed"
        if not bad:
            lines.append(f"{tally}, all unchanged")
        else:
            parts = [
                f"{len(found)} {word}"
                for found, word in (
                    (self.inputs_changed, "changed"),
                    (self.inputs_missing, "missing"),
                )
                if found
            ]
            lines.append(f"{tally}, {', '.join(parts)}")
        return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def check_record(path: str | Path) -> RecordCheck:
    """Recompute a record's hash, re-hash its inputs and its model; say what changed since.

    An input or the model is looked for at its absolute path, else at its path relative to the
    record's folder (a case folder copied elsewhere). JianmuError when the file is not a record.
    """
    path = Path(path)
    record = load_record(path)
    stored = record[HASH_KEY]
    content = {key: value for key, value in record.items() if key != HASH_KEY}
    # NaN never gets into a sealed record: one written in later is a change, not a bad file.
    check = RecordCheck(
        path=path,
        record_sha256=stored,
        record_intact=_content_sha256(content, allow_nan=True) == stored,
        command=_text(record.get("command")),
        created=_text(record.get("created")),
    )
    inputs = record.get("inputs")
    for entry in inputs if isinstance(inputs, list) else []:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("path", entry.get("abs")))
        expected = entry.get("sha256")
        if not isinstance(expected, str):
            check.inputs_unhashed.append(name)
            continue
        found = _find(entry, path.parent)
        current = _sha256_or_none(found, file_sha256) if found is not None else None
        if current is None:
            check.inputs_missing.append(name)
        else:
            check.inputs_checked += 1
            if current != expected:
                check.inputs_changed.append(name)
    model = record.get("model")
    if isinstance(model, dict):
        check.model_path = str(model.get("path", model.get("abs")))
        found = _find(model, path.parent)
        current = _sha256_or_none(found, model_sha256) if found is not None else None
        if current is not None:
            check.model_changed = current != model.get("sha256")
    return check


def _find(entry: Mapping[str, Any], folder: Path) -> Path | None:
    """The file an entry names: at its absolute path, else relative to the record's folder."""
    for candidate in (entry.get("abs"), entry.get("path")):
        if isinstance(candidate, str) and candidate:
            found = folder / candidate  # an absolute candidate stays as it is
            if found.exists():
                return found
    return None


def _sha256_or_none(path: Path, hasher) -> str | None:
    try:
        return hasher(path)
    except OSError:  # unreadable now (permissions, a folder where a file was): counted missing
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
