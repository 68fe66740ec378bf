"""Writing files so that a kill, Ctrl-C or a full disk never leaves half a file under its name.

No heavy imports: the ONNX prediction path (no torch) writes its outputs with these too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from jianmu.errors import JianmuError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path`` and rename it over ``path``: a kill or a
    full disk never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise JianmuError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of a text, as is (no newline translation)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding, newline=""))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
