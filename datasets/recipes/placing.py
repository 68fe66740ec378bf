"""Placing a file in a regrouped data set: hard link (default), symbolic link or copy.

Shared by the recipes in this folder (each runs as ``python3 datasets/recipes/<script>.py``, which
puts this folder on the import path).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def place(source: Path, target: Path, how: str) -> bool:
    """Link or copy ``source`` to ``target``; False when an identical entry is already there."""
    if target.exists() or target.is_symlink():
        if target.exists() and os.path.samefile(source, target):
            return False
        raise FileExistsError(f"{target} exists and is a different file")
    target.parent.mkdir(parents=True, exist_ok=True)
    if how == "copy":
        shutil.copy2(source, target)
    elif how == "symlink":
        target.symlink_to(source.resolve())
    else:
        try:
            os.link(source, target)
        except OSError as error:
            raise OSError(
                f"cannot hard-link {source} -> {target} ({error.strerror}); "
                "SRC and DST may be on different file systems: use --symlink or --copy"
            ) from None
    return True
