"""write_eval_report: every file written, with the numbers and names it should hold."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from jianmu.engine.evaluate import EvalResult, Misclassified
from jianmu.report.eval_files import write_eval_report
from jianmu.report.eval_page import write_markdown
from jianmu.report.plots import _taxonomic_order

CLASSES = ["Dalbergia_odorifera", "Dalbergia_latifolia", "Tectona_grandis", "Pinus_sp", "odd<b>"]
CONFUSION = np.array(
    [
        [8, 2, 0, 0, 0],
        [1, 9, 0, 0, 0],
        [0, 0, 10, 0, 0],
        [0, 0, 1, 7, 2],
        [0, 0, 0, 0, 5],
    ]
)


def _bins(accuracies: list[float | None], counts: list[int]) -> list[dict]:
    return [
        {
            "lower": b / 5,
            "upper": (b + 1) / 5,
            "count": count,
            "accuracy": accuracy,
            "confidence": None if accuracy is None else b / 5 + 0.1,
        }
        for b, (accuracy, count) in enumerate(zip(accuracies, counts, strict=True))
    ]


def _per_class(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        hits, support, predicted = confusion[i, i], confusion[i].sum(), confusion[:, i].sum()
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        rows.append(
            {
                "class": name,
                "precision": np.float64(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": np.int64(support),
            }
        )
    return rows


@pytest.fixture(scope="module")
def result() -> EvalResult:
    return EvalResult(
        model="convnext_tiny",
        data="wood-test",
        split="test",
        classes=CLASSES,
        species=[
            "Dalbergia odorifera",
            "Dalbergia latifolia",
            "Tectona grandis",
            "Pinus sp.",
            None,
        ],
        genus=["Dalbergia", "Dalbergia", "Tectona", "Pinus", None],
        family=["Fabaceae", "Fabaceae", "Lamiaceae", "Pinaceae", None],
        metrics={
            "count": 45,
            "top1": 0.8667,
            "top2": 0.9556,
            "top3": np.float32(0.9778),
            "balanced_accuracy": 0.86,
            "macro_f1": 0.8512,
            "weighted_f1": 0.8631,
            "genus_top1": 0.9333,
            "family_top1": 0.9333,
            "within_genus_errors": np.int64(3),
            "ece_before": 0.0812,
            "ece_after": 0.0214,
            "temperature": 1.437,
            "macro_precision": float("nan"),
            "per_class": _per_class(CONFUSION, CLASSES),
        },
        confusion=CONFUSION,
        reliability_before=_bins([None, 0.3, 0.5, 0.6, 0.9], [0, 3, 5, 10, 27]),
        reliability_after=_bins([None, 0.35, 0.55, 0.7, 0.95], [0, 4, 6, 12, 23]),
        most_confused=[
            ("Dalbergia_odorifera", "Dalbergia_latifolia", 2),
            ("Pinus_sp", "odd<b>", 2),
        ],
        misclassified=[
            Misclassified(
                "wood/Dalbergia_odorifera/s01/img_003.jpg",
                "Dalbergia_odorifera",
                [("Dalbergia_latifolia", 0.61), ("Dalbergia_odorifera", 0.3), ("Pinus_sp", 0.05)],
            )
        ],
        unreadable=[("wood/Tectona_grandis/broken_file.jpg", "truncated JPEG")],
        specimen_metrics={"count": 12, "top1": 0.9167, "balanced_accuracy": 0.9},
        tta={"views": 4, "top1_without": 0.8667, "top1_with": 0.8889, "gain": 0.0222},
        open_set={"score": "energy", "threshold": -3.25, "flagged_unknown": 0.0444},
        open_set_table=[
            {"held_out": "Tectona grandis", "score": "energy", "auroc": 0.91, "recall": 0.95},
            {"held_out": "Pinus sp.", "score": "msp", "auroc": float("nan"), "recall": 0.9},
        ],
    )


@pytest.fixture(scope="module")
def written(result, tmp_path_factory) -> dict:
    """The 5-class report, written once into a folder that does not exist yet."""
    return write_eval_report(result, tmp_path_factory.mktemp("eval") / "report" / "nested")


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _read_csv(path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_writes_every_file(written):
    paths = written
    expected = {
        "metrics.json",
        "per_class.csv",
        "confusion.csv",
        "confusion.png",
        "reliability.png",
        "misclassified.csv",
        "predictions.csv",
        "report.md",
        "report.html",
    }
    assert set(paths) == expected
    for name, path in paths.items():
        assert path.name == name and path.parent.name == "nested"
        assert path.stat().st_size > 0
    for name in ("confusion.png", "reliability.png"):
        assert min(_image_size(paths[name])) > 300


def test_metrics_json_is_plain_json(written):
    document = json.loads(written["metrics.json"].read_text(encoding="utf-8"))
    assert document["model"] == "convnext_tiny"
    assert (document["data"], document["split"]) == ("wood-test", "test")
    assert document["classes"] == CLASSES
    assert document["top1"] == 0.8667
    assert math.isclose(document["top3"], 0.9778, rel_tol=1e-6)  # numpy float32 unwrapped
    assert document["within_genus_errors"] == 3
    assert document["macro_precision"] is None  # NaN -> null
    assert document["per_class"][0]["support"] == 10
    assert document["specimen_metrics"]["top1"] == 0.9167
    assert document["tta"]["gain"] == 0.0222
    assert document["open_set"]["score"] == "energy"
    assert document["open_set_table"][1]["auroc"] is None
    assert document["unreadable"] == [
        {"path": "wood/Tectona_grandis/broken_file.jpg", "reason": "truncated JPEG"}
    ]


def test_csv_files(written):
    paths = written

    per_class = _read_csv(paths["per_class.csv"])
    assert per_class[0] == [
        "class", "species", "genus", "family", "precision", "recall", "f1", "support",
    ]  # fmt: skip
    assert per_class[1][:4] == [
        "Dalbergia_odorifera",
        "Dalbergia odorifera",
        "Dalbergia",
        "Fabaceae",
    ]
    assert float(per_class[1][5]) == pytest.approx(0.8)
    assert per_class[1][7] == "10"
    assert per_class[5][:4] == ["odd<b>", "", "", ""]

    confusion = _read_csv(paths["confusion.csv"])
    assert confusion[0] == ["true/predicted", *CLASSES]
    assert [row[0] for row in confusion[1:]] == CLASSES
    assert np.array_equal(np.array([row[1:] for row in confusion[1:]], dtype=int), CONFUSION)

    misclassified = _read_csv(paths["misclassified.csv"])
    assert misclassified[0] == [
        "path", "true_class", "top1_class", "top1_probability", "top2_class", "top2_probability",
        "top3_class", "top3_probability",
    ]  # fmt: skip
    assert misclassified[1] == [
        "wood/Dalbergia_odorifera/s01/img_003.jpg", "Dalbergia_odorifera",
        "Dalbergia_latifolia", "0.6100", "Dalbergia_odorifera", "0.3000", "Pinus_sp", "0.0500",
    ]  # fmt: skip


def test_markdown_report(written):
    text = written["report.md"].read_text(encoding="utf-8")
    for expected in (
        "| top-1 | 86.7% | 91.7% |",  # image level beside specimen level
        "| top-3 | 97.8% | – |",
        "| macro-F1 | 85.1% | – |",
        "| family top-1 | 93.3% | – |",
        "8.1% → 2.1%",
        "| temperature | 1.437 |",
        "| images / specimens | 45 | 12 |",
        "+2.2 points",
        "Tectona grandis",
        "wood/Dalbergia_odorifera/s01/img_003.jpg",
        "Dalbergia_latifolia (61%)",
        "misclassified.csv",
        "![Row-normalised confusion matrix (taxonomic order)](confusion.png)",
        "(reliability.png)",
    ):
        assert expected in text, expected
    assert "wood/Tectona_grandis/broken_file.jpg" in text
    # Per-class rows run from the lowest F1 up: Pinus_sp (recall 0.7) before Tectona_grandis.
    assert text.index("| Pinus_sp |") < text.index("| Tectona_grandis |")
    assert "odd\\<b\\>" in text
    assert "specimens identified" not in text  # absent from specimen_metrics: no row


def test_markdown_shows_the_specimen_rule(result, tmp_path):
    specimen = {
        **result.specimen_metrics,
        "identified": 0.75,
        "identified_top1": np.float64(0.9667),
        "rule": "A specimen is identified when its mean top-1 probability is at least 0.8.",
    }
    path = write_markdown(
        dataclasses.replace(result, specimen_metrics=specimen), tmp_path / "report.md"
    )
    text = path.read_text(encoding="utf-8")
    assert "| specimens identified |  | 75.0% |" in text
    assert "| top-1 of identified specimens |  | 96.7% |" in text
    assert "| top-1 | 86.7% | 91.7% |" in text
    table_end = text.index("| images / specimens | 45 | 12 |")
    assert text.index("A specimen is identified when", table_end) > table_end


def test_html_report_is_self_contained_and_escaped(written):
    text = written["report.html"].read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == 2
    assert "odd&lt;b&gt;" in text
    assert "<b>" not in text
    assert "86.7%" in text and "wood/Tectona_grandis/broken_file.jpg" in text
    assert "http://" not in text and "https://" not in text


def test_confusion_png_grows_with_class_count(result, written, tmp_path):
    count = 145
    rng = np.random.default_rng(0)
    confusion = np.diag(rng.integers(5, 20, count))
    for _ in range(300):
        confusion[rng.integers(count), rng.integers(count)] += 1
    classes = [f"class_{i:03d}" for i in range(count)]
    family = [f"Family{i % 29:02d}" for i in range(count)]
    large = EvalResult(
        model="test",
        data="synthetic",
        split="test",
        classes=classes,
        species=[f"Genus{i % 29:02d} species{i:03d}" for i in range(count)],
        genus=[f"Genus{i % 29:02d}" for i in range(count)],
        family=family,
        metrics={"count": int(confusion.sum()), "per_class": _per_class(confusion, classes)},
        confusion=confusion,
        reliability_before=result.reliability_before,
        reliability_after=result.reliability_after,
        most_confused=[],
    )
    small_size = _image_size(written["confusion.png"])
    large_size = _image_size(write_eval_report(large, tmp_path)["confusion.png"])
    assert large_size[0] > 2 * small_size[0] and large_size[1] > 2 * small_size[1]


def test_confusion_order_groups_family_then_genus(result):
    order = _taxonomic_order(result)
    # Fabaceae (Dalbergia latifolia before odorifera), Lamiaceae, Pinaceae, then no family.
    assert [result.classes[i] for i in order] == [
        "Dalbergia_latifolia", "Dalbergia_odorifera", "Tectona_grandis", "Pinus_sp", "odd<b>",
    ]  # fmt: skip
