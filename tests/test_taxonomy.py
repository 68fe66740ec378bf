import pytest
import yaml

from jianmu.config import load_config
from jianmu.errors import JianmuError
from jianmu.taxonomy import check_folders, load_taxonomy


@pytest.mark.parametrize(
    "folder",
    [
        "1-Dalbergia_tucurensis",
        "dalbergia tucurensis",
        "Dalbergia-tucurensis",
        "DALBERGIA_TUCURENSIS",
        "01_Dalbergia tucurensis",
        " Dalbergia  tucurensis ",
    ],
)
def test_folder_name_variants_match(tiny_taxonomy_path, folder):
    match = load_taxonomy(tiny_taxonomy_path).match(folder)
    assert match.entry is not None and match.entry.name == "Dalbergia tucurensis"
    assert match.via == "name"


def test_synonym_maps_to_accepted_name(tiny_taxonomy_path):
    match = load_taxonomy(tiny_taxonomy_path).match("5-Cassia_siamea")
    assert match.entry.name == "Senna siamea"
    assert match.via == "synonym"
    assert "synonym" in match.describe()


def test_unmatched_folder_reports_closest_names(tiny_taxonomy_path):
    match = load_taxonomy(tiny_taxonomy_path).match("Dalbergia tucurense")
    assert match.entry is None
    assert match.candidates[0] == "Dalbergia tucurensis"
    assert "not in the taxonomy" in match.describe()
    assert load_taxonomy(tiny_taxonomy_path).match("Quercus robur").candidates == []


def test_check_folders_flags_unmatched_and_collisions(tiny_taxonomy_path):
    taxonomy = load_taxonomy(tiny_taxonomy_path)
    result = check_folders(taxonomy, ["1-Dalbergia_tucurensis", "Teak", "Cassia siamea"])
    assert [m.query for m in result.unmatched] == ["Teak"]
    assert not result.ok
    clash = check_folders(taxonomy, ["Senna_siamea", "Cassia_siamea"])
    assert clash.collisions == {"Senna siamea": ["Senna_siamea", "Cassia_siamea"]}
    assert not clash.ok
    assert check_folders(taxonomy, ["Tectona grandis", "Senna siamea"]).ok


def test_flags_in_words(tiny_taxonomy_path):
    taxonomy = load_taxonomy(tiny_taxonomy_path)
    assert taxonomy.get("Senna siamea").flags == ["Hongmu 鸡翅木类"]
    assert taxonomy.get("Dalbergia stevensonii").flags == ["CITES App. II"]
    assert taxonomy.get("Tectona grandis").flags == []


def _write(tmp_path, data):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _base(species):
    return {"domain": "wood", "version": "1", "title": "t", "sources": [], "species": species}


@pytest.mark.parametrize(
    "species, message",
    [
        (
            [{"name": "Tectona grandis", "genus": "Tectona", "family": "Lamiaceae"}] * 2,
            "listed twice",
        ),
        ([{"name": "Tectona grandis", "genus": "Teak", "family": "Lamiaceae"}], "genus"),
        (
            [
                {
                    "name": "Senna siamea",
                    "genus": "Senna",
                    "family": "Fabaceae",
                    "synonyms": ["Tectona grandis"],
                },
                {"name": "Tectona grandis", "genus": "Tectona", "family": "Lamiaceae"},
            ],
            "clashes",
        ),
        (
            [
                {
                    "name": "Tectona grandis",
                    "genus": "Tectona",
                    "family": "Lamiaceae",
                    "sources": ["nowhere"],
                }
            ],
            "unknown source",
        ),
        ([{"name": "Tectona grandis", "genus": "Tectona", "family": "L", "cites": "IV"}], "cites"),
        ([{"name": "Tectona grandis", "genus": "Tectona", "famly": "L"}], "did you mean 'family'"),
    ],
)
def test_invalid_taxonomies_are_refused(tmp_path, species, message):
    with pytest.raises(JianmuError, match=message):
        load_taxonomy(_write(tmp_path, _base(species)))


def test_unknown_domain_hint():
    with pytest.raises(JianmuError, match="did you mean 'wood'"):
        load_taxonomy("wod")


EXPECTED_COUNTS = {"wood": 145, "weed_seed": 110, "insect": 32}


@pytest.mark.parametrize("domain", sorted(EXPECTED_COUNTS))
def test_shipped_taxonomies(domain):
    taxonomy = load_taxonomy(domain)
    assert taxonomy.domain == domain
    assert len(taxonomy) == EXPECTED_COUNTS[domain]
    assert taxonomy.sources and taxonomy.version
    cited = {source for species in taxonomy.species for source in species.sources}
    assert cited <= {source.id for source in taxonomy.sources}
    for species in taxonomy.species:
        assert len(species.name.split()) >= 2, species.name
        if domain == "wood":
            assert species.quarantine is None
        else:
            assert species.cites is None and species.hongmu is None


def test_wood_holds_hongmu_and_swfu5_species():
    taxonomy = load_taxonomy("wood")
    assert sum(1 for s in taxonomy.species if s.hongmu) == 29
    for folder in [
        "1-Dalbergia_tucurensis",
        "2-Dalbergia_stevensonii",
        "3-Diospyros_crassiflora",
        "4-Millettia_stuhlmannii",
    ]:
        assert taxonomy.match(folder).via == "name", folder
    assert taxonomy.match("5-Cassia_siamea").entry.name == "Senna siamea"
    assert taxonomy.get("Dalbergia nigra").cites == "I"


@pytest.mark.parametrize(
    ("domain", "name", "species", "via"),
    [
        ("wood", "Wenge", "Millettia laurentii", "trade name"),
        ("wood", "3-sapele", "Entandrophragma cylindricum", "trade name"),
        ("wood", "檀香紫檀", "Pterocarpus santalinus", "Chinese name"),
        ("weed_seed", "buffalobur", "Solanum rostratum", "trade name"),
    ],
)
def test_unique_trade_and_chinese_names_match(domain, name, species, via):
    match = load_taxonomy(domain).match(name)
    assert (match.entry.name, match.via) == (species, via)
    assert via in match.describe()


@pytest.mark.parametrize(("name", "count"), [("Bubinga", 3), ("cocobolo", 2), ("紫檀", 8)])
def test_ambiguous_names_are_refused_with_the_candidates(name, count):
    match = load_taxonomy("wood").match(name)
    assert match.entry is None and match.via == "ambiguous"
    assert len(match.candidates) == count
    assert f"ambiguous: {count} species" in match.describe()


def test_a_chinese_name_that_is_only_part_of_one_is_not_a_guess():
    match = load_taxonomy("wood").match("降香")
    assert match.entry is None and match.via == "none"
    assert match.candidates == ["Dalbergia odorifera"]


def test_folders_by_trade_name_pass_the_check_and_ambiguous_ones_block(tmp_path):
    from jianmu.data.audit import audit_dataset
    from jianmu.data.synth import generate_dataset

    generate_dataset(tmp_path, "wood", 2, per_class=3, size=48, class_names=["Wenge", "Bubinga"])
    taxonomy = load_taxonomy("wood")
    check = check_folders(taxonomy, ["Wenge", "Bubinga"])
    assert [m.via for m in check.matches] == ["trade name", "ambiguous"] and not check.ok
    report = audit_dataset(tmp_path, load_config().data, taxonomy=taxonomy)
    assert report.blocking[-1].startswith("class folders not in the taxonomy: Bubinga (ambiguous")


@pytest.mark.parametrize(
    ("domain", "folder", "species"),
    [
        ("wood", "Diospyros_blancoi", "Diospyros blancoi"),
        ("wood", "Diospyros philippensis", "Diospyros blancoi"),  # GB/T 18107's name
        ("wood", "Shorea_leprosula", "Rubroshorea leprosula"),
        ("weed_seed", "Iva_xanthifolia", "Cyclachaena xanthiifolia"),  # the Chinese list's spelling
        ("insect", "Bactrocera_curcubitae", "Zeugodacus cucurbitae"),  # tephritid-wings' spelling
        ("insect", "Bactrocera cucurbitae", "Zeugodacus cucurbitae"),
        ("insect", "地中海实蝇", "Ceratitis capitata"),
    ],
)
def test_the_names_the_field_uses_resolve(domain, folder, species):
    assert load_taxonomy(domain).match(folder).entry.name == species
