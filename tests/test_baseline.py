"""Bench results against a baseline: tolerances, edges, missing figures, files and the table."""

import json
import math

import pytest

from jianmu.engine.baseline import (
    Comparison,
    Tolerance,
    build_tolerances,
    compare,
    comparison_markdown,
    load_baseline,
    write_baseline,
)
from jianmu.errors import JianmuError

BASELINE = {
    "eval.top1": 0.90,
    "eval.macro_f1": 0.88,
    "eval.ece": 0.02,
    "export.onnx.top1_agreement": 1.0,
    "speed.onnx_over_torch": 2.4,
}
TOLERANCES = build_tolerances(
    {
        "eval.top1": {"max_drop": 0.02},
        "eval.macro_f1": {"max_drop": 0.03},
        "eval.ece": {"max_rise": 0.01},
        "export.onnx.top1_agreement": {"min_value": 0.995},
        "speed.onnx_over_torch": {"min_ratio": 0.9},
    }
)


def _row(comparison: Comparison, figure: str):
    (row,) = [row for row in comparison.rows if row.figure == figure]
    return row


def _status(value: float, baseline: float | None, **rules) -> str:
    comparison = compare(
        {"x": value}, None if baseline is None else {"x": baseline}, {"x": Tolerance(**rules)}
    )
    return _row(comparison, "x").status


# --- verdicts -------------------------------------------------------------------------------------


def test_same_figures_as_baseline_pass():
    comparison = compare(dict(BASELINE), BASELINE, TOLERANCES)
    assert comparison.ok
    assert {row.status for row in comparison.rows} == {"ok"}
    assert comparison.regressions == [] and comparison.failures == []


def test_worse_result_fails_and_names_the_figure():
    comparison = compare({**BASELINE, "eval.top1": 0.861}, BASELINE, TOLERANCES)
    assert not comparison.ok
    assert [row.figure for row in comparison.regressions] == ["eval.top1"]
    row = comparison.regressions[0]
    assert row.failed and row.value == 0.861 and row.baseline == 0.90
    assert row.message == "eval.top1 0.861 < baseline 0.9 - 0.02 = 0.88"
    assert "eval.top1" in comparison.summary()
    assert _row(comparison, "eval.macro_f1").status == "ok"  # the others are untouched


def test_every_broken_rule_is_reported():
    comparison = compare(
        {
            **BASELINE,
            "eval.ece": 0.05,
            "speed.onnx_over_torch": 1.2,
            "export.onnx.top1_agreement": 0.98,
        },
        BASELINE,
        TOLERANCES,
    )
    assert [row.figure for row in comparison.regressions] == [
        "eval.ece",
        "export.onnx.top1_agreement",
        "speed.onnx_over_torch",
    ]
    messages = [row.message for row in comparison.regressions]
    assert messages[0] == "eval.ece 0.05 > baseline 0.02 + 0.01 = 0.03"
    assert messages[1] == "export.onnx.top1_agreement 0.98 < floor 0.995"
    assert messages[2] == "speed.onnx_over_torch 1.2 < 0.9 x baseline 2.4 = 2.16"


def test_better_result_passes_as_improved_in_either_direction():
    better = {**BASELINE, "eval.top1": 0.95, "eval.ece": 0.01, "speed.onnx_over_torch": 3.0}
    comparison = compare(better, BASELINE, TOLERANCES)
    assert comparison.ok
    assert _row(comparison, "eval.top1").status == "improved"
    assert _row(comparison, "eval.ece").status == "improved"  # lower is better for ECE
    assert _row(comparison, "speed.onnx_over_torch").status == "improved"
    assert _row(comparison, "eval.macro_f1").status == "ok"


def test_small_drop_within_tolerance_is_ok_not_improved():
    comparison = compare({**BASELINE, "eval.top1": 0.89}, BASELINE, TOLERANCES)
    assert comparison.ok
    assert _row(comparison, "eval.top1").status == "ok"


# --- tolerance edges: exactly at the limit passes, just past it fails -----------------------------


@pytest.mark.parametrize(
    ("rules", "baseline", "at_limit", "past_limit"),
    [
        ({"max_drop": 0.02}, 0.90, 0.88, 0.8799),
        ({"max_rise": 0.01}, 0.02, 0.03, 0.0301),
        ({"min_ratio": 0.9}, 2.4, 2.16, 2.1599),
        ({"max_ratio": 1.1}, 10.0, 11.0, 11.001),
        ({"min_value": 0.995}, 1.0, 0.995, 0.9949),
        ({"max_value": 0.05}, 0.01, 0.05, 0.0501),
    ],
)
def test_limits_are_inclusive(rules, baseline, at_limit, past_limit):
    assert _status(at_limit, baseline, **rules) in ("ok", "improved")
    assert _status(past_limit, baseline, **rules) == "regression"


@pytest.mark.parametrize(
    ("rules", "baseline", "at_limit", "computed"),
    [
        ({"max_drop": 0.05}, 0.53, 0.48, 0.53 - 0.05),
        ({"max_rise": 0.01}, 0.06, 0.07, 0.06 + 0.01),
        ({"min_ratio": 0.9}, 1.1, 0.99, 0.9 * 1.1),
    ],
)
def test_float_noise_at_the_limit_does_not_fail(rules, baseline, at_limit, computed):
    assert computed != at_limit  # the naive comparison would flip
    assert _status(at_limit, baseline, **rules) == "ok"


def test_nan_and_infinite_values_of_judged_figures_fail():
    for bad in (math.nan, math.inf, -math.inf, None, "fast"):
        comparison = compare({**BASELINE, "eval.top1": bad}, BASELINE, TOLERANCES)
        assert [row.figure for row in comparison.regressions] == ["eval.top1"], bad
        assert "not a finite number" in comparison.regressions[0].message


def test_nan_in_an_unjudged_figure_is_only_recorded():
    comparison = compare({**BASELINE, "speed.images_per_s": math.nan}, BASELINE, TOLERANCES)
    assert comparison.ok
    assert _row(comparison, "speed.images_per_s").status == "new"


# --- missing and new figures ----------------------------------------------------------------------


def test_missing_required_figure_fails():
    figures = {k: v for k, v in BASELINE.items() if k != "eval.ece"}
    comparison = compare(figures, BASELINE, TOLERANCES)
    assert not comparison.ok
    row = _row(comparison, "eval.ece")
    assert row.status == "missing" and row.failed and row.value is None
    assert comparison.missing == [row] and comparison.regressions == []
    assert "eval.ece" in row.message and "missing: eval.ece" in comparison.summary()


def test_missing_optional_figure_passes():
    tolerances = {**TOLERANCES, "speed.int8_over_fp32": Tolerance(min_ratio=0.9, required=False)}
    comparison = compare(dict(BASELINE), BASELINE, tolerances)
    assert comparison.ok
    row = _row(comparison, "speed.int8_over_fp32")
    assert row.status == "missing" and not row.failed


def test_figure_absent_from_baseline_is_new():
    tolerances = {**TOLERANCES, "eval.top5": Tolerance(max_drop=0.01)}
    comparison = compare({**BASELINE, "eval.top5": 0.5}, BASELINE, tolerances)
    assert comparison.ok
    row = _row(comparison, "eval.top5")
    assert row.status == "new" and row.baseline is None and row.value == 0.5


def test_new_figure_still_meets_its_floor():
    tolerances = {**TOLERANCES, "export.int8.top1_agreement": Tolerance(min_value=0.99)}
    figures = {**BASELINE, "export.int8.top1_agreement": 0.9}
    comparison = compare(figures, BASELINE, tolerances)
    assert [row.figure for row in comparison.regressions] == ["export.int8.top1_agreement"]


def test_unjudged_figures_are_recorded_not_judged():
    baseline = {**BASELINE, "speed.predict_over_model": 0.85, "eval.old_figure": 0.5}
    figures = {**BASELINE, "speed.predict_over_model": 0.01, "eval.brand_new": 7.0}
    comparison = compare(figures, baseline, TOLERANCES)
    assert comparison.ok
    assert _row(comparison, "speed.predict_over_model").status == "ok"
    assert _row(comparison, "speed.predict_over_model").limit == ""
    assert _row(comparison, "eval.brand_new").status == "new"
    old = _row(comparison, "eval.old_figure")
    assert old.status == "missing" and not old.failed


def test_first_run_without_baseline_passes_but_floors_still_apply():
    comparison = compare(dict(BASELINE), None, TOLERANCES)
    assert comparison.ok
    assert {row.status for row in comparison.rows} == {"new"}
    worse = {**BASELINE, "eval.top1": 0.1, "export.onnx.top1_agreement": 0.5}
    comparison = compare(worse, None, TOLERANCES)
    assert [row.figure for row in comparison.regressions] == ["export.onnx.top1_agreement"]
    assert _row(comparison, "eval.top1").status == "new"  # relative rules need a baseline


def test_first_run_still_requires_required_figures():
    comparison = compare({"eval.top1": 0.9}, None, TOLERANCES)
    assert not comparison.ok
    assert {row.figure for row in comparison.missing} == set(TOLERANCES) - {"eval.top1"}


def test_nan_in_baseline_counts_as_no_baseline():
    comparison = compare({"x": 0.1}, {"x": math.nan}, {"x": Tolerance(max_drop=0.0)})
    assert comparison.ok
    assert _row(comparison, "x").status == "new"


def test_ratio_rules_skip_a_non_positive_baseline():
    comparison = compare({"x": -5.0}, {"x": 0.0}, {"x": Tolerance(min_ratio=0.9)})
    assert comparison.ok
    assert "baseline is not positive" in _row(comparison, "x").message


def test_to_dict_is_json_ready():
    comparison = compare({**BASELINE, "eval.top1": math.nan}, BASELINE, TOLERANCES)
    record = json.loads(json.dumps(comparison.to_dict(), allow_nan=False))
    assert record["ok"] is False
    assert record["regressions"] == ["eval.top1 is not a finite number (nan)"]
    top1 = [row for row in record["rows"] if row["figure"] == "eval.top1"][0]
    assert top1["value"] is None and top1["baseline"] == 0.9 and top1["status"] == "regression"


# --- tolerance validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        ({}, "at least one rule"),
        ({"required": False}, "at least one rule"),
        (None, "at least one rule"),
        ({"max_drop": -0.01}, "max_drop"),
        ({"max_rise": -1}, "max_rise"),
        ({"min_ratio": 0}, "min_ratio"),
        ({"max_ratio": -2}, "max_ratio"),
        ({"max_drop": float("nan")}, "finite"),
        ({"min_ratio": 1.2, "max_ratio": 1.1}, "min_ratio 1.2 is above max_ratio 1.1"),
        ({"min_value": 1, "max_value": 0}, "min_value 1.0 is above max_value 0.0"),
        ({"max_dorp": 0.01}, "unknown rule 'max_dorp'"),
        (0.02, "expected a mapping"),
    ],
)
def test_invalid_tolerance_is_one_line_jianmu_error(rules, fragment):
    with pytest.raises(JianmuError, match="tolerances.eval.top1: ") as caught:
        build_tolerances({"eval.top1": rules})
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_tolerances_must_be_a_mapping():
    with pytest.raises(JianmuError, match="mapping"):
        build_tolerances([{"max_drop": 0.1}], source="suite.tolerances")
    assert build_tolerances(None) == {}


def test_direction_follows_the_rules_unless_given():
    assert Tolerance(max_drop=0.01).higher_is_better is True
    assert Tolerance(max_rise=0.01).higher_is_better is False
    assert Tolerance(max_ratio=1.2, max_value=0.1).higher_is_better is False
    assert Tolerance(max_rise=0.01, max_drop=0.01).higher_is_better is True
    assert Tolerance(max_value=0.1, higher_is_better=True).higher_is_better is True


# --- files ----------------------------------------------------------------------------------------


def _bench(figures):
    return {
        "suite": "wood-swfu5",
        "figures": figures,
        "hardware": {"cpu": "2 cores", "gpu": None},
        "versions": {"jianmu": "0.1", "torch": "2.5"},
        "git_commit": "3a1d3f6",
        "seeds": [0, 1],
        "date": "2026-05-09T07:35:25+00:00",
        "runs": ["a big list that is not kept"],
    }


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "baselines" / "wood-swfu5.json"
    assert load_baseline(path) is None  # first run: no file, no error
    bench = _bench({**BASELINE, "speed.images_per_s": math.nan})
    assert write_baseline(path, bench) == path
    loaded = load_baseline(path)
    assert loaded["figures"] == {**BASELINE, "speed.images_per_s": None}
    for key in ("suite", "hardware", "versions", "git_commit", "seeds", "date"):
        assert loaded[key] == bench[key]
    assert "runs" not in loaded
    assert list(tmp_path.joinpath("baselines").iterdir()) == [path]  # no temp file left behind
    json.loads(path.read_text(encoding="utf-8"))  # strict JSON: no NaN token
    assert compare(BASELINE, loaded["figures"], TOLERANCES).ok


def test_write_baseline_replaces_and_dates(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text("old", encoding="utf-8")
    write_baseline(path, {"figures": {"eval.top1": 0.9}})
    loaded = load_baseline(path)
    assert loaded["figures"] == {"eval.top1": 0.9}
    assert loaded["date"].startswith("20")


def test_write_baseline_needs_figures(tmp_path):
    with pytest.raises(JianmuError, match="figures"):
        write_baseline(tmp_path / "baseline.json", {"suite": "x"})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"figures": {"eval.top1": 0.9', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "'figures' object"),
        ('{"figures": [0.9]}', "'figures' object"),
        ('{"figures": {"eval.top1": "high"}}', "eval.top1"),
    ],
)
def test_corrupt_baseline_is_one_line_jianmu_error(tmp_path, text, fragment):
    path = tmp_path / "baseline.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JianmuError, match="baseline") as caught:
        load_baseline(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_baseline_is_jianmu_error(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(JianmuError, match="cannot read baseline"):
        load_baseline(path)
    with pytest.raises(JianmuError, match="cannot read baseline"):
        load_baseline(tmp_path)  # a folder


# --- markdown -------------------------------------------------------------------------------------


def test_markdown_table_lists_every_figure():
    figures = {**BASELINE, "eval.top1": 0.861, "speed.images_per_s": 120.5}
    del figures["eval.ece"]
    comparison = compare(figures, BASELINE, TOLERANCES)
    text = comparison_markdown(comparison)
    lines = text.splitlines()
    assert lines[0].startswith("**FAIL**")
    assert "| figure | value | baseline | limit | status |" in lines
    for figure in [*BASELINE, "speed.images_per_s"]:
        assert sum(f"| `{figure}` |" in line for line in lines) == 1, figure
    assert "| `eval.top1` | 0.861 | 0.9 | >= baseline - 0.02 | **regression** |" in lines
    assert "| `eval.ece` | - | 0.02 | <= baseline + 0.01 | **missing** |" in lines
    assert "- eval.top1 0.861 < baseline 0.9 - 0.02 = 0.88" in lines
    assert comparison_markdown(compare(BASELINE, BASELINE, TOLERANCES)).startswith("**PASS**")
