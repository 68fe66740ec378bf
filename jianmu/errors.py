"""The one exception type for user errors (the CLI prints it as a single red line), and the one
"did you mean" hint that such errors carry."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JianmuError(Exception):
    """A problem the user can fix (bad config, missing folder, class mismatch, ...)."""


def close_matches(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The names of ``known`` closest to ``name`` (difflib), best first; case is ignored when the
    exact spelling finds nothing."""
    known = list(known)
    found = difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
    if found:
        return found
    lowered = {item.lower(): item for item in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n, cutoff)]


def did_you_mean(
    name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6, list_known: bool = False
) -> str:
    """``"; did you mean 'x' or 'y'?"`` for the closest of ``known``, else ``""`` (or, with
    ``list_known``, ``"; known: a, b, c"``)."""
    known = list(known)
    close = close_matches(name, known, n, cutoff)
    if close:
        return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if list_known and known:
        return "; known: " + ", ".join(known)
    return ""
