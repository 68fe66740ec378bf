"""Answers at the deepest sure rank, regulatory status that follows the rank, and declarations:
the rank and flag logic on hand-made taxonomies, fitting on hand-made embeddings, and `jianmu
verify` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from imagefiles import write_text, write_truncated_jpeg
from tiny import settings, tiny_config
from typer.testing import CliRunner

import jianmu
from jianmu.calibration.fit import (
    fit_rank_thresholds,
    fit_statistics,
    fit_temperature,
    fit_unit_thresholds,
    known_pool,
    transfer_thresholds,
    unseen_pool,
)
from jianmu.calibration.ranks import Hierarchy, class_scores, decide, rank_scores, rank_units
from jianmu.calibration.scores import softmax
from jianmu.cli import app
from jianmu.data.synth import generate_dataset
from jianmu.errors import JianmuError
from jianmu.outputs import Outputs
from jianmu.taxonomy import (
    Lineage,
    class_hierarchy,
    lineage_of,
    load_taxonomy,
    match_declared,
    rank_flags,
)

runner = CliRunner()
SOURCE = [{"id": "test", "title": "hand-written"}]


def _taxonomy(tmp_path: Path, species: list[dict]) -> Path:
    path = tmp_path / "taxonomy.yaml"
    document = {"domain": "wood", "version": "t.1", "title": "t", "sources": SOURCE}
    path.write_text(yaml.safe_dump({**document, "species": species}, allow_unicode=True))
    return path


def _species(name: str, family: str, **flags) -> dict:
    return {"name": name, "genus": name.split()[0], "family": family, **flags}


@pytest.fixture
def taxonomy(tmp_path):
    return load_taxonomy(
        _taxonomy(
            tmp_path,
            [
                _species("Dalbergia nigra", "Fabaceae", cites="I", trade_names=["Rio rosewood"]),
                _species("Dalbergia retusa", "Fabaceae", cites="II", chinese_name="微凹黄檀"),
                _species("Pterocarpus santalinus", "Fabaceae", cites="II", hongmu="紫檀木类"),
                _species("Pterocarpus indicus", "Fabaceae", synonyms=["Pterocarpus pallidus"]),
                _species("Tectona grandis", "Lamiaceae", trade_names=["Teak"]),
            ],
        )
    )


# --- lineage and flags ----------------------------------------------------------------------------


def test_flags_are_certain_only_when_every_species_carries_them(taxonomy):
    members = {
        g: [s for s in taxonomy.species if s.genus == g] for g in ("Dalbergia", "Pterocarpus")
    }
    assert rank_flags(members["Dalbergia"], "genus") == {
        "flags": ["CITES App. I or II"], "possible": []
    }  # fmt: skip
    assert rank_flags(members["Pterocarpus"], "genus") == {
        "flags": [],
        "possible": [
            "possibly CITES-listed (1 of 2 species in the genus)",
            "possibly Hongmu (1 of 2 species in the genus)",
        ],
    }
    teak = [s for s in taxonomy.species if s.genus == "Tectona"]
    assert rank_flags(teak, "genus") == {"flags": [], "possible": []}
    # a species outside the taxonomy has no known status: a certain flag becomes possible
    assert rank_flags([*members["Dalbergia"], None], "genus")["possible"] == [
        "possibly CITES-listed (2 of 3 species in the genus)"
    ]


def test_hierarchy_of_classes_inside_and_outside_the_taxonomy(taxonomy):
    classes = ["1-Dalbergia_nigra", "Dalbergia_cearensis", "Trupanea_vittigera", "mystery_01"]
    hierarchy = class_hierarchy(classes, taxonomy, families={"Trupanea": "Tephritidae"})
    assert hierarchy["lineage"] == [
        {"species": "Dalbergia nigra", "genus": "Dalbergia", "family": "Fabaceae"},
        # a binomial folder: its genus; the family from the taxonomy's other Dalbergia
        {"species": "Dalbergia cearensis", "genus": "Dalbergia", "family": "Fabaceae"},
        {"species": "Trupanea vittigera", "genus": "Trupanea", "family": "Tephritidae"},
        {"species": None, "genus": None, "family": None},  # not a binomial: its own species only
    ]
    dalbergia = hierarchy["flags"]["genus"]["Dalbergia"]
    assert dalbergia == {
        "flags": [],
        "possible": ["possibly CITES-listed (2 of 3 species in the genus)"],
    }
    assert lineage_of("Zeugodacus_cucurbitae") == Lineage(
        "Zeugodacus cucurbitae", "Zeugodacus", None
    )


# --- declared names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rank", "label", "flags"),
    [
        ("Dalbergia retusa", "species", "Dalbergia retusa", ["CITES App. II"]),
        ("微凹黄檀", "species", "Dalbergia retusa", ["CITES App. II"]),  # Chinese name
        ("Rio rosewood", "species", "Dalbergia nigra", ["CITES App. I"]),  # trade name
        ("Pterocarpus pallidus", "species", "Pterocarpus indicus", []),  # synonym
        ("Dalbergia sp.", "genus", "Dalbergia sp.", ["CITES App. I or II"]),
        ("dalbergia spp", "genus", "Dalbergia sp.", ["CITES App. I or II"]),
        ("Pterocarpus", "genus", "Pterocarpus sp.", []),
        ("Fabaceae", "family", "Fabaceae", []),
    ],
)
def test_declared_names_match_at_their_rank(taxonomy, name, rank, label, flags):
    declared = match_declared(name, taxonomy)
    assert (declared.rank, declared.label, declared.flags) == (rank, label, flags)


def test_declared_names_that_match_nothing_or_several_are_one_line_errors(taxonomy, tmp_path):
    with pytest.raises(JianmuError, match="matches no species, genus or family"):
        match_declared("Quercus robur", taxonomy)
    shared = _species("Pterocarpus macrocarpus", "Fabaceae", trade_names=["Padauk"])
    two = [shared, _species("Pterocarpus soyauxii", "Fabaceae", trade_names=["Padauk"])]
    padauk = load_taxonomy(_taxonomy(tmp_path, two))
    with pytest.raises(JianmuError, match="ambiguous: 2 species"):
        match_declared("Padauk", padauk)
    classes = {"Trupanea_vittigera": Lineage("Trupanea vittigera", "Trupanea", None)}
    assert match_declared("trupanea vittigera", None, classes).rank == "species"
    assert match_declared("Trupanea sp.", None, classes).label == "Trupanea sp."


# --- fitting and applying the rank rule on hand-made embeddings -----------------------------------

LINEAGE = [
    {"species": "A a", "genus": "A", "family": "F"},
    {"species": "A b", "genus": "A", "family": "F"},
    {"species": "A c", "genus": "A", "family": "F"},
    {"species": "B a", "genus": "B", "family": "G"},
]
CENTRES = np.array([[0.0, 0, 0], [2, 0, 0], [1, 1.0, 0], [20, 0, 0]])


def _outputs(seed: int, per_class: int = 60) -> Outputs:
    """Three close species of genus A and one far species of genus B, in 3-D; one photo in ten
    of each is a poor one, far from its species' centre (as blurred or odd photos are)."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(4), per_class)
    spread = np.where(rng.random(len(targets)) < 0.1, 1.0, 0.25)[:, None]
    embeddings = CENTRES[targets] + rng.normal(size=(len(targets), 3)) * spread
    logits = -((embeddings[:, None, :] - CENTRES[None]) ** 2).sum(-1)
    ok = np.ones(len(targets), dtype=bool)
    return Outputs(logits.astype(np.float32), embeddings.astype(np.float32), targets, ok)


def test_fitted_rank_thresholds_answer_a_species_never_seen_at_its_genus():
    hierarchy = Hierarchy.from_lineage(LINEAGE, ["Aa", "Ab", "Ac", "Ba"])
    train, val = _outputs(0), _outputs(1)
    statistics = fit_statistics(train).as_stored()
    temperature = fit_temperature(val.logits, val.targets)
    fitted = fit_rank_thresholds(
        statistics, "relative_mahalanobis", val, hierarchy, temperature, 0.02
    )
    thresholds, figures = fitted["thresholds"], fitted["validation"]
    assert figures["known_wrong"] <= 0.02 and figures["unseen_wrong"] <= 0.02
    assert figures["known_species"] > 0.9  # the known species are answered as species
    assert thresholds["genus"] < thresholds["species"]
    # "A c" unseen: a model that knows only A a, A b and B a answers its photos "A sp."
    test = _outputs(2)
    rows = np.flatnonzero(test.targets == 2)
    alive = np.array([True, True, False, True])
    scores = class_scores(
        statistics, "relative_mahalanobis", test.logits, test.embeddings, temperature
    )
    probabilities = softmax(test.logits, temperature)
    scored = rank_scores(scores[rows], probabilities[rows], hierarchy, alive)
    answers = decide(scored, thresholds)
    genus = np.mean((answers == 1) & (scored.taxa["genus"] == hierarchy.names["genus"].index("A")))
    assert genus > 0.8 and np.mean(answers == 0) <= 0.05  # almost never a species answer


def test_msp_scores_a_taxon_by_the_probability_of_its_classes_together():
    hierarchy = Hierarchy.from_lineage(LINEAGE, ["Aa", "Ab", "Ac", "Ba"])
    probabilities = np.array([[0.3, 0.3, 0.3, 0.1], [0.05, 0.05, 0.1, 0.8]])
    scored = rank_scores(probabilities, probabilities, hierarchy, summed=True)
    assert scored.scores["species"] == pytest.approx([0.3, 0.8])
    assert scored.scores["genus"] == pytest.approx([0.9, 0.8])  # "A sp." at 90%, "B sp." 80%
    assert list(scored.taxa["genus"]) == [0, 1]
    best_of = rank_scores(probabilities, probabilities, hierarchy)
    assert best_of.scores["genus"] == pytest.approx([0.3, 0.8])  # a distance rule: the nearest
    # "A c" left out: a softmax without it shares its 30% among the other three
    alive = np.array([True, True, False, True])
    without = rank_scores(probabilities[:1], probabilities[:1], hierarchy, alive, summed=True)
    assert without.scores["species"] == pytest.approx([0.3 / 0.7])
    assert without.scores["genus"] == pytest.approx([0.6 / 0.7])
    # fitted on the hand-made embeddings, the genus answers an unseen "A c" and keeps its rate
    train, val = _outputs(0), _outputs(1)
    statistics = fit_statistics(train).as_stored()
    temperature = fit_temperature(val.logits, val.targets)
    fitted = fit_rank_thresholds(statistics, "msp", val, hierarchy, temperature, 0.02)
    assert fitted["validation"]["unseen_wrong"] <= 0.02
    test = _outputs(2)
    rows = np.flatnonzero(test.targets == 2)
    probabilities = softmax(test.logits, temperature)[rows]
    held = rank_scores(probabilities, probabilities, hierarchy, alive, summed=True)
    answers = decide(held, fitted["thresholds"])
    assert np.mean(answers == 1) > 0.8 and np.mean(answers == 0) <= 0.05


def test_rank_thresholds_travel_between_models_in_units_of_their_validation_scores():
    hierarchy = Hierarchy.from_lineage(LINEAGE, ["Aa", "Ab", "Ac", "Ba"])
    statistics = fit_statistics(_outputs(0)).as_stored()
    val = _outputs(1)
    temperature = fit_temperature(val.logits, val.targets)

    def scored(outputs: Outputs, alive=None):
        scores = class_scores(statistics, "relative_mahalanobis", outputs.logits,
                              outputs.embeddings, temperature)  # fmt: skip
        return rank_scores(scores, softmax(outputs.logits, temperature), hierarchy, alive)

    known = scored(val)
    units = rank_units(known)
    low, median, high = np.quantile(known.scores["genus"], [0.25, 0.5, 0.75])
    assert units["genus"] == pytest.approx((median, high - low))
    moved = transfer_thresholds({"species": 0.0, "genus": -1.0, "family": None}, known)
    assert moved["species"] == pytest.approx(units["species"][0])
    assert moved["genus"] == pytest.approx(median - (high - low))
    assert moved["family"] == np.inf  # never answer at the family
    floored = transfer_thresholds({"species": -5.0, "genus": -1.0, "family": None}, known, 0.0)
    assert floored["species"] == 0.0  # never looser than the unknown rule's own threshold
    # a model of the same recipe never trained on "A c": its photos may be "A sp.", never a species
    unseen_rows = np.flatnonzero(val.targets == 2)
    alive = np.array([True, True, False, True])
    held = scored(val.subset(val.targets == 2), alive)
    pool = unseen_pool(held.in_units(units), LINEAGE[2], hierarchy)
    assert pool.truth.shape == (len(unseen_rows), 3)
    assert (pool.truth[:, 0] == -2).all() and (
        pool.truth[:, 1] == hierarchy.names["genus"].index("A")
    ).all()
    kept = val.subset(val.targets != 2)
    pools = [known_pool(scored(kept).in_units(units), kept.targets, hierarchy), pool]
    fitted = fit_unit_thresholds(pools, 0.02)
    assert fitted["validation"]["worst_wrong"] <= 0.02
    thresholds = transfer_thresholds(fitted["thresholds"], known)
    answers = decide(held, thresholds)
    assert np.mean(answers == 1) > 0.8 and np.mean(answers == 0) <= 0.02  # "A sp."


# --- predict and verify with rank answers ---------------------------------------------------------

CLASSES = ["Dalbergia_odorifera", "Dalbergia_cochinchinensis", "Tectona_grandis"]


@pytest.fixture(scope="module")
def genus_model(tmp_path_factory):
    """An ONNX bundle whose rank thresholds answer every photo at the genus rank."""
    import onnx

    from jianmu.bundle import META_KEY

    base = tmp_path_factory.mktemp("decisions")
    generate_dataset(base / "data", "wood", 3, per_class=8, size=48, seed=7, class_names=CLASSES)
    run = jianmu.train(tiny_config(base / "data", base / "run", "train.epochs=1")).run_dir
    path = jianmu.export(settings(out=base / "model.onnx"), run).path
    model = onnx.load(str(path))
    entry = next(p for p in model.metadata_props if p.key == META_KEY)
    meta = json.loads(entry.value)
    never, always = None, -1e9
    meta["ranks"]["thresholds"] = {"1": {"species": never, "genus": always, "family": always}}
    entry.value = json.dumps(meta)
    onnx.save(model, str(path))
    return base, path


def test_answers_at_the_genus_rank_carry_the_genus_status(genus_model, tmp_path):
    base, model = genus_model
    folders = [base / "data" / name for name in CLASSES]
    result = jianmu.predict(settings(out=tmp_path / "r.json"), model, folders)
    records = {r["rank"] for r in result.images}
    assert records == {"genus"} and result.summary["identified"] == 0
    assert result.summary["ranks"]["genus"] == result.summary["ok"]
    dalbergia = [r for r in result.images if r["genus"] == "Dalbergia"]
    assert dalbergia and all(r["taxon"] == "Dalbergia sp." for r in dalbergia)
    assert all(r["verdict"] == "unknown - refer to lab" and r["species"] is None for r in dalbergia)
    # every Dalbergia of the shipped taxonomy is CITES-listed: certain at the genus
    assert all("CITES App. I or II" in r["flags"] for r in dalbergia)
    assert all(r["evidence"]["genus"]["threshold"] == -1e9 for r in result.images)
    assert result.summary["regulated_specimens"]["certain"] >= 1
    document = json.loads((tmp_path / "r.json").read_text("utf-8"))  # strict JSON: no infinity
    assert document["specimens"][0]["rank"] == "genus"


def test_verify_decides_every_specimen_and_names_the_consequence(genus_model, tmp_path):
    base, model = genus_model
    folder = base / "data" / "Tectona_grandis"
    field = tmp_path / "field"
    field.mkdir()
    for index, photo in enumerate(sorted(folder.rglob("*.jpg"))[:4]):
        target = field / ("S1" if index < 2 else "S2") / photo.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(photo.read_bytes())
    write_truncated_jpeg(field / "S2" / "broken.jpg")
    write_text(field / "S3" / "notes.jpg")  # a specimen with no readable photo
    out = tmp_path / "verify.csv"
    result = jianmu.verify(settings(out=out, verify__declared="Tectona sp."), model, [field])
    assert len(result.images) == 6 and result.summary["failed"] == 2  # every input one row
    decisions = {s["specimen"]: s["decision"] for s in result.specimens}
    assert decisions["S3"] == "cannot decide"
    assert {decisions["S1"], decisions["S2"]} <= {"consistent", "inconsistent"}
    with open(out, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[6:10] == ["declared", "decision", "reason", "consequence"]
    assert all(row["declared"] == "Tectona sp." for row in rows)
    assert result.summary["decisions"]["cannot decide"] >= 1
    # declared as a Dalbergia (non-listed declaration vs a listed look-alike is the consequence)
    declarations = tmp_path / "papers.csv"
    declarations.write_text("specimen,declared\nS1,Dalbergia sp.\nS2,Teak\nS3,Teak\n")
    done = runner.invoke(
        app, ["verify", str(model), str(field), "--declarations", str(declarations)]
    )
    assert done.exit_code in (3, 4), done.output
    assert "declarations" in done.output


def test_verify_refuses_unknown_names_and_missing_declarations_in_one_line(genus_model, tmp_path):
    base, model = genus_model
    photos = str(base / "data" / CLASSES[0])
    for args, text in [
        (["--declared", "Nothofagus imaginaria"], "matches no species"),
        (["--declared", "紫檀"], "ambiguous"),
        ([], "give one of --declared NAME or --declarations FILE.csv"),
    ]:
        result = runner.invoke(app, ["verify", str(model), photos, *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and text in lines[0], result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("specimen,declared\nS1,Nothing here\n")
    result = runner.invoke(app, ["verify", str(model), photos, "--declarations", str(bad)])
    assert result.exit_code == 2 and "bad.csv:2" in result.output
