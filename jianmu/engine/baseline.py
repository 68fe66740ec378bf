"""Bench results against a committed baseline: per-figure tolerances, regressions, a table.

A result is a flat mapping of figure name -> number (``{"eval.top1": 0.99, ...}``), the
``figures`` of a bench.json. Each figure named in the suite's tolerances is judged by its rules;
other figures are recorded but not judged. Imports neither torch nor the rest of jianmu (except
the error type), so ``jianmu bench --check`` can compare two JSON files without a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from jianmu.errors import JianmuError
from jianmu.files import write_text_atomic

Status = Literal["ok", "regression", "missing", "new", "improved"]
BASELINE_KEYS = ("suite", "figures", "hardware", "versions", "git_commit", "seeds", "date")
_RULES = ("max_drop", "max_rise", "min_ratio", "max_ratio", "min_value", "max_value")
_UPPER_RULES = ("max_rise", "max_ratio", "max_value")
_EPS = 1e-12  # relative: 0.53 - 0.05 is 0.48000000000000004, and 0.48 must still pass


class Tolerance(BaseModel):
    """How far one figure may move from its baseline; limits are inclusive.

    ``max_drop``/``max_rise`` are absolute (``new >= baseline - max_drop``), ``min_ratio``/
    ``max_ratio`` relative (``new >= min_ratio * baseline``, for a positive baseline), and
    ``min_value``/``max_value`` absolute floors and ceilings that hold with or without a baseline.
    ``higher_is_better`` only decides what counts as "improved"; left out, it is true unless every
    rule is an upper bound (``max_rise``, ``max_ratio``, ``max_value``), as for ECE or latency.
    """

    model_config = ConfigDict(extra="forbid")

    higher_is_better: bool | None = None
    max_drop: FiniteFloat | None = Field(default=None, ge=0.0)
    max_rise: FiniteFloat | None = Field(default=None, ge=0.0)
    min_ratio: FiniteFloat | None = Field(default=None, gt=0.0)
    max_ratio: FiniteFloat | None = Field(default=None, gt=0.0)
    min_value: FiniteFloat | None = None
    max_value: FiniteFloat | None = None
    required: bool = Field(default=True, description="a missing figure fails the comparison")

    @model_validator(mode="after")
    def _rules_make_sense(self) -> Tolerance:
        given = [rule for rule in _RULES if getattr(self, rule) is not None]
        if not given:
            raise ValueError(f"give at least one rule: {', '.join(_RULES)}")
        if _both(self.min_ratio, self.max_ratio) and self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio {self.min_ratio} is above max_ratio {self.max_ratio}")
        if _both(self.min_value, self.max_value) and self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} is above max_value {self.max_value}")
        if self.higher_is_better is None:
            self.higher_is_better = not all(rule in _UPPER_RULES for rule in given)
        return self


def _both(first: float | None, second: float | None) -> bool:
    return first is not None and second is not None


def build_tolerances(
    raw: Mapping[str, Any] | None, source: str = "tolerances"
) -> dict[str, Tolerance]:
    """Validate a YAML mapping of figure name -> rules; the first problem is one JianmuError."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise JianmuError(f"{source}: expected a mapping of figure name -> rules")
    tolerances = {}
    for figure, rules in raw.items():
        if isinstance(rules, Tolerance):
            tolerances[str(figure)] = rules
            continue
        try:
            tolerances[str(figure)] = Tolerance.model_validate(rules or {})
        except ValidationError as error:
            raise JianmuError(f"{source}.{figure}: {_first_problem(error)}") from None
    return tolerances


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown rule '{key}' (rules: higher_is_better, required, {', '.join(_RULES)})"
    if first["type"] == "model_type":
        return f"expected a mapping of rules, got {first['input']!r}"
    return f"{key}: {message}" if key else message


@dataclass
class ComparisonRow:
    """One figure: its value, the baseline, the limit in words and the verdict."""

    figure: str
    value: float | None
    baseline: float | None
    limit: str
    status: Status
    message: str = ""
    failed: bool = False  # a regression, or a missing required figure


@dataclass
class Comparison:
    """Every figure of a bench run against its baseline; ``ok`` is what CI checks."""

    rows: list[ComparisonRow] = field(default_factory=list)

    @property
    def regressions(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.status == "regression"]

    @property
    def missing(self) -> list[ComparisonRow]:
        """Required figures the run did not produce."""
        return [row for row in self.rows if row.status == "missing" and row.failed]

    @property
    def failures(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line for the console, e.g. ``2 regressions: eval.top1, speed.onnx_over_torch``."""
        if self.ok:
            judged = sum(1 for row in self.rows if row.limit)
            return f"no regressions ({judged} figure{'s' if judged != 1 else ''} judged)"
        parts = []
        if self.regressions:
            count = len(self.regressions)
            names = ", ".join(row.figure for row in self.regressions)
            parts.append(f"{count} regression{'s' if count != 1 else ''}: {names}")
        if self.missing:
            parts.append(f"missing: {', '.join(row.figure for row in self.missing)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become null (the row's message says which)."""
        rows = []
        for row in self.rows:
            record = asdict(row)
            record["value"] = _finite_or_none(row.value)
            record["baseline"] = _finite_or_none(row.baseline)
            rows.append(record)
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "regressions": [row.message for row in self.failures],
            "rows": rows,
        }


def compare(
    figures: Mapping[str, float],
    baseline: Mapping[str, float | None] | None,
    tolerances: Mapping[str, Tolerance],
) -> Comparison:
    """Judge ``figures`` against ``baseline`` (None on the first run) with ``tolerances``.

    Rows follow the order of ``figures``, then required or optional figures the run lacks, then
    figures only the baseline has. A figure without a usable baseline value is "new" and is
    judged by its absolute ``min_value``/``max_value`` only; a NaN or infinite judged value is a
    regression; figures without a tolerance are recorded with status "ok" or "new".
    """
    baseline = baseline or {}
    rows = []
    for figure, raw in figures.items():
        value = _as_float(raw)
        reference = _as_float(baseline.get(figure))
        if reference is not None and not math.isfinite(reference):
            reference = None  # a NaN in the committed file: nothing to compare against
        tolerance = tolerances.get(figure)
        if tolerance is None:
            status: Status = "ok" if reference is not None else "new"
            rows.append(ComparisonRow(figure, value, reference, "", status, "not judged"))
        else:
            rows.append(_judge(figure, value, reference, tolerance))
    for figure, tolerance in tolerances.items():
        if figure in figures:
            continue
        reference = _as_float(baseline.get(figure))
        limit = _describe(tolerance)
        if tolerance.required:
            message = f"{figure} is required but the run did not produce it"
        else:
            message = f"{figure} not measured (optional)"
        rows.append(
            ComparisonRow(figure, None, reference, limit, "missing", message, tolerance.required)
        )
    for figure, raw in baseline.items():
        if figure not in figures and figure not in tolerances:
            message = f"{figure} is in the baseline only (not judged)"
            rows.append(ComparisonRow(figure, None, _as_float(raw), "", "missing", message))
    return Comparison(rows)


def _judge(
    figure: str, value: float | None, reference: float | None, tolerance: Tolerance
) -> ComparisonRow:
    limit = _describe(tolerance)
    if value is None or not math.isfinite(value):
        message = f"{figure} is not a finite number ({value})"
        return ComparisonRow(figure, value, reference, limit, "regression", message, True)
    broken = _broken_rules(figure, value, reference, tolerance)
    if broken:
        return ComparisonRow(figure, value, reference, limit, "regression", "; ".join(broken), True)
    if reference is None:
        return ComparisonRow(figure, value, reference, limit, "new", "no baseline")
    has_ratio = tolerance.min_ratio is not None or tolerance.max_ratio is not None
    note = "ratio rules skipped: baseline is not positive" if has_ratio and reference <= 0 else ""
    better = value > reference if tolerance.higher_is_better else value < reference
    if better and not _close(value, reference):
        return ComparisonRow(figure, value, reference, limit, "improved", note)
    return ComparisonRow(figure, value, reference, limit, "ok", note)


def _broken_rules(
    figure: str, value: float, reference: float | None, tolerance: Tolerance
) -> list[str]:
    """One message per rule ``value`` breaks; every limit is inclusive."""
    name, v = figure, _fmt(value)
    broken = []
    if tolerance.min_value is not None and _below(value, tolerance.min_value):
        broken.append(f"{name} {v} < floor {_fmt(tolerance.min_value)}")
    if tolerance.max_value is not None and _below(tolerance.max_value, value):
        broken.append(f"{name} {v} > ceiling {_fmt(tolerance.max_value)}")
    if reference is None:
        return broken
    base = _fmt(reference)
    if tolerance.max_drop is not None:
        limit = reference - tolerance.max_drop
        if _below(value, limit, reference):
            drop = _fmt(tolerance.max_drop)
            broken.append(f"{name} {v} < baseline {base} - {drop} = {_fmt(limit)}")
    if tolerance.max_rise is not None:
        limit = reference + tolerance.max_rise
        if _below(limit, value, reference):
            rise = _fmt(tolerance.max_rise)
            broken.append(f"{name} {v} > baseline {base} + {rise} = {_fmt(limit)}")
    if reference > 0 and tolerance.min_ratio is not None:
        limit = tolerance.min_ratio * reference
        if _below(value, limit, reference):
            ratio = _fmt(tolerance.min_ratio)
            broken.append(f"{name} {v} < {ratio} x baseline {base} = {_fmt(limit)}")
    if reference > 0 and tolerance.max_ratio is not None:
        limit = tolerance.max_ratio * reference
        if _below(limit, value, reference):
            ratio = _fmt(tolerance.max_ratio)
            broken.append(f"{name} {v} > {ratio} x baseline {base} = {_fmt(limit)}")
    return broken


def _below(low: float, high: float, *scale: float) -> bool:
    """``low < high`` by more than float noise relative to the numbers involved."""
    size = max(abs(low), abs(high), *(abs(x) for x in scale))
    return low < high - _EPS * size


def _close(first: float, second: float) -> bool:
    return not _below(first, second) and not _below(second, first)


_LIMIT_WORDS = (
    ("max_drop", ">= baseline - {}"),
    ("max_rise", "<= baseline + {}"),
    ("min_ratio", ">= {} x baseline"),
    ("max_ratio", "<= {} x baseline"),
    ("min_value", ">= {}"),
    ("max_value", "<= {}"),
)


def _describe(tolerance: Tolerance) -> str:
    """The limit in words, e.g. ``>= baseline - 0.02, >= 0.995``."""
    return ", ".join(
        words.format(_fmt(value))
        for name, words in _LIMIT_WORDS
        if (value := getattr(tolerance, name)) is not None
    )


def _as_float(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan  # a string where a number belongs: judged as not finite


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def comparison_markdown(comparison: Comparison) -> str:
    """A markdown table (figure | value | baseline | limit | status) and the failure messages."""
    lines = [
        f"**{'PASS' if comparison.ok else 'FAIL'}**: {comparison.summary()}",
        "",
        "| figure | value | baseline | limit | status |",
        "|---|---:|---:|---|---|",
    ]
    for row in comparison.rows:
        status = f"**{row.status}**" if row.failed else row.status
        cells = [f"`{row.figure}`", _fmt(row.value), _fmt(row.baseline), row.limit, status]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if comparison.failures:
        lines.append("")
        lines.extend(f"- {row.message}" for row in comparison.failures)
    return "\n".join(lines) + "\n"


def load_baseline(path: str | Path) -> dict[str, Any] | None:
    """The baseline record at ``path``, or None when there is none yet (the first run)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise JianmuError(f"cannot read baseline {path}: {reason}") from None
    except json.JSONDecodeError as error:
        raise JianmuError(f"baseline {path} is not valid JSON: {error}") from None
    figures = record.get("figures") if isinstance(record, dict) else None
    if not isinstance(figures, dict):
        raise JianmuError(f"baseline {path}: expected a JSON object with a 'figures' object")
    for figure, value in figures.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise JianmuError(f"baseline {path}: figure {figure!r} is not a number ({value!r})")
    return record


def write_baseline(path: str | Path, bench: Mapping[str, Any]) -> Path:
    """Write ``bench``'s figures, suite, versions, hardware, git commit, seeds and date to ``path``
    atomically (temp file + rename); non-finite figures are stored as null."""
    path = Path(path)
    if not isinstance(bench.get("figures"), Mapping):
        raise JianmuError("cannot write a baseline without a 'figures' mapping")
    record = {key: bench[key] for key in BASELINE_KEYS if key in bench}
    record["figures"] = {
        str(name): _finite_or_none(_as_float(value)) for name, value in bench["figures"].items()
    }
    record.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    return write_text_atomic(path, text)
