"""Species lists (configs/taxonomy/<domain>.yaml) and matching names to them: class folders now,
declared names in a declaration check.

A folder such as ``1-Dalbergia_tucurensis`` or ``dalbergia tucurensis`` maps to *Dalbergia
tucurensis*; a synonym maps to its accepted name (``5-Cassia_siamea`` -> *Senna siamea*); a trade
name (``Wenge``) or a Chinese name (``檀香紫檀``) maps to its species when exactly one species of
the list carries it. An ambiguous name (``Bubinga``: three species; ``紫檀``: part of several
Chinese names) is refused with the candidates listed, never guessed; an unmatched name comes back
with the closest names instead of being accepted silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from jianmu.config import DOMAINS, Domain, find_configs_dir, read_yaml, validate_config
from jianmu.errors import JianmuError, close_matches, did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    id: str
    title: str
    url: str | None = None


class Species(_Strict):
    """One taxonomy entry: an accepted species name with its regulatory flags."""

    name: str
    authority: str | None = None
    genus: str
    family: str
    chinese_name: str | None = None
    trade_names: list[str] = []
    synonyms: list[str] = []
    cites: Literal["I", "II", "III"] | None = None
    hongmu: str | None = None
    quarantine: Literal["china_entry", "china_bilateral"] | None = None
    unverified: bool = False
    sources: list[str] = []
    note: str | None = None

    @model_validator(mode="after")
    def _genus_matches_name(self) -> Species:
        if self.name.split()[0] != self.genus:
            raise ValueError(f"genus {self.genus!r} is not the first word of {self.name!r}")
        return self

    @property
    def flags(self) -> list[str]:
        """Regulatory flags in words, for tables and reports."""
        flags = []
        if self.cites:
            flags.append(f"CITES App. {self.cites}")
        if self.hongmu:
            flags.append(f"Hongmu {self.hongmu}")
        if self.quarantine == "china_entry":
            flags.append("quarantine pest (China entry list)")
        elif self.quarantine == "china_bilateral":
            flags.append("quarantine pest (bilateral agreement)")
        return flags


class Taxonomy(_Strict):
    domain: Domain
    version: str
    title: str
    description: str = ""
    sources: list[Source]
    species: list[Species] = Field(min_length=1)
    _index: _Index | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Taxonomy:
        names = Counter(_normalize(s.name) for s in self.species)
        repeated = sorted(n for n, count in names.items() if count > 1)
        if repeated:
            raise ValueError(f"species listed twice: {', '.join(repeated)}")
        seen: dict[str, str] = {}
        for species in self.species:
            for synonym in species.synonyms:
                key = _normalize(synonym)
                if key in names or key in seen:
                    other = seen.get(key, synonym)
                    raise ValueError(f"synonym {synonym!r} of {species.name} clashes with {other}")
                seen[key] = species.name
        source_ids = {source.id for source in self.sources}
        for species in self.species:
            missing = [s for s in species.sources if s not in source_ids]
            if missing:
                raise ValueError(f"{species.name}: unknown source id(s) {', '.join(missing)}")
        return self

    def __len__(self) -> int:
        return len(self.species)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.species]

    def get(self, name: str) -> Species | None:
        """The entry for an accepted name or synonym (any case/separators), or None."""
        return self.match(name).entry

    def entries(self, species: list[str | None]) -> list[dict[str, Any] | None]:
        """Plain records (name, Chinese name, genus, family, flags, ...) of ``species``, in order;
        what bundles store so that they need no taxonomy file."""
        found = [self.get(name) if name else None for name in species]
        return [
            {**entry.model_dump(exclude={"sources", "note"}), "flags": entry.flags}
            if entry
            else None
            for entry in found
        ]

    def match(self, folder_name: str) -> NameMatch:
        """Match a dataset folder name to an entry (see module docstring)."""
        if self._index is None:
            self._index = _Index(self)
        return self._index.match(folder_name)


@dataclass(frozen=True)
class NameMatch:
    """Result of matching one name: ``entry`` is None when nothing matched, or when the name is
    ambiguous (``via == "ambiguous"``, the species it could be in ``candidates``)."""

    query: str
    entry: Species | None
    via: Literal["name", "synonym", "trade name", "Chinese name", "ambiguous", "none"]
    candidates: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.via == "ambiguous":
            count = len(self.candidates)
            return f"{self.query!r} is ambiguous: {count} species ({', '.join(self.candidates)})"
        if self.entry is None:
            hint = f" (closest: {', '.join(self.candidates)})" if self.candidates else ""
            return f"{self.query!r} is not in the taxonomy{hint}"
        if self.via != "name":
            return f"{self.query!r} -> {self.entry.name} ({self.via})"
        return f"{self.query!r} -> {self.entry.name}"


_LEADING_INDEX = re.compile(r"^\s*\d+\s*[-_.)\s]\s*")
_SEPARATORS = re.compile(r"[\s_\-.]+")


def _normalize(name: str) -> str:
    """'1-Dalbergia_tucurensis' -> 'dalbergia tucurensis' (case, accents, index, separators)."""
    text = unicodedata.normalize("NFKC", name).strip()
    text = _LEADING_INDEX.sub("", text)
    text = _SEPARATORS.sub(" ", text).strip().casefold()
    return text


class _Index:
    def __init__(self, taxonomy: Taxonomy) -> None:
        self.by_name = {_normalize(s.name): s for s in taxonomy.species}
        self.by_synonym = {_normalize(syn): s for s in taxonomy.species for syn in s.synonyms}
        self.by_trade = _grouped(
            (_normalize(trade), s) for s in taxonomy.species for trade in s.trade_names
        )
        self.by_chinese = _grouped(
            (_normalize(s.chinese_name), s) for s in taxonomy.species if s.chinese_name
        )
        self.display = {k: s.name for k, s in self.by_name.items()}
        for key, species in self.by_synonym.items():
            self.display[key] = f"{species.name} (syn. {key.capitalize()})"

    def match(self, query: str) -> NameMatch:
        key = _normalize(query)
        if key in self.by_name:
            return NameMatch(query, self.by_name[key], "name")
        if key in self.by_synonym:
            return NameMatch(query, self.by_synonym[key], "synonym")
        for via, index in (("trade name", self.by_trade), ("Chinese name", self.by_chinese)):
            found = index.get(key, [])
            if len(found) == 1:
                return NameMatch(query, found[0], via)
            if found:
                return NameMatch(query, None, "ambiguous", [s.name for s in found])
        containing = [s for name, group in self.by_chinese.items() if key in name for s in group]
        if key and _is_chinese(key) and containing:
            # only part of a Chinese name: never a guess, even when one species contains it
            via = "ambiguous" if len(containing) > 1 else "none"
            return NameMatch(query, None, via, [s.name for s in containing])
        close = close_matches(key, self.display, n=3, cutoff=0.6)
        return NameMatch(query, None, "none", [self.display[c] for c in close])


def _grouped(pairs) -> dict[str, list[Species]]:
    groups: dict[str, list[Species]] = {}
    for key, species in pairs:
        if species not in groups.setdefault(key, []):
            groups[key].append(species)
    return groups


def _is_chinese(text: str) -> bool:
    return any("\u4e00" <= character <= "\u9fff" for character in text)


def find_taxonomy_path(domain_or_path: str | Path) -> Path:
    """A domain name (``wood``) resolves to the shipped YAML; anything else is a file path."""
    if str(domain_or_path) in DOMAINS:
        return find_configs_dir() / "taxonomy" / f"{domain_or_path}.yaml"
    path = Path(domain_or_path)
    if path.is_file():
        return path
    extra = did_you_mean(str(domain_or_path), DOMAINS, n=1) or f"; domains: {', '.join(DOMAINS)}"
    raise JianmuError(f"unknown taxonomy {str(domain_or_path)!r}{extra}")


def load_taxonomy(domain_or_path: str | Path) -> Taxonomy:
    """Load and validate a taxonomy by domain name or YAML path (cached per file)."""
    path = find_taxonomy_path(domain_or_path).resolve()
    return _load_taxonomy_file(path, path.stat().st_mtime_ns if path.exists() else 0)


@cache
def _load_taxonomy_file(path: Path, mtime_ns: int) -> Taxonomy:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise JianmuError(f"{path}: expected a taxonomy mapping (domain, version, species, ...)")
    return validate_config(raw, source=str(path), model=Taxonomy)


# --- ranks: the lineage of a model's classes and the regulatory status of a genus or family -------

RANKS = ("species", "genus", "family")
_BINOMIAL = re.compile(r"^[A-Za-z][a-z]+(?: [a-z][a-z-]+)+$")


@dataclass(frozen=True)
class Lineage:
    """The species, genus and family of a class; None where it is not known."""

    species: str | None
    genus: str | None
    family: str | None

    def at(self, rank: str) -> str | None:
        return getattr(self, rank)

    def to_dict(self) -> dict[str, str | None]:
        return {rank: self.at(rank) for rank in RANKS}


def lineage_of(
    name: str, taxonomy: Taxonomy | None = None, families: dict[str, str] | None = None
) -> Lineage:
    """A class folder's lineage: its taxonomy entry's; else, for a binomial folder name
    (``Genus_species``, ``Genus species``), that genus, with its family from ``families`` (a lab's
    genus -> family map) or from the taxonomy's other species of the genus; else nothing."""
    entry = taxonomy.match(name).entry if taxonomy is not None else None
    if entry is not None:
        return Lineage(entry.name, entry.genus, entry.family)
    words = _SEPARATORS.sub(" ", _LEADING_INDEX.sub("", unicodedata.normalize("NFKC", name)))
    words = words.strip()
    if not _BINOMIAL.match(words):
        return Lineage(None, None, None)
    species = words[0].upper() + words[1:]
    genus = species.split()[0]
    family = (families or {}).get(genus)
    if family is None and taxonomy is not None:
        family = next((s.family for s in taxonomy.species if s.genus == genus), None)
    return Lineage(species, genus, family)


def rank_flags(members: list[Species | None], rank: str) -> dict[str, list[str]]:
    """What is certain, and what is only possible, about the regulatory status of a taxon whose
    members (its species in the taxonomy and the model; None: a species outside the taxonomy, of
    unknown status) are ``members``: ``{"flags": [...], "possible": [...]}``. A flag is certain
    when every member carries it."""
    flags: list[str] = []
    possible: list[str] = []
    kinds = (
        ("cites", lambda values: f"CITES App. {' or '.join(sorted(values))}", "CITES-listed"),
        ("hongmu", lambda values: "Hongmu " + " or ".join(sorted(values)), "Hongmu"),
        ("quarantine", _quarantine_words, "a quarantine pest"),
    )
    for field_name, certain, maybe in kinds:
        values = [getattr(member, field_name, None) if member else None for member in members]
        listed = [value for value in values if value]
        if members and len(listed) == len(members):
            flags.append(certain(set(listed)))
        elif listed:
            possible.append(
                f"possibly {maybe} ({len(listed)} of {len(members)} species in the {rank})"
            )
    return {"flags": flags, "possible": possible}


def _quarantine_words(values: set[str]) -> str:
    words = {"china_entry": "China entry list", "china_bilateral": "bilateral agreement"}
    return "quarantine pest (" + " or ".join(words[value] for value in sorted(values)) + ")"


def class_hierarchy(
    classes: list[str], taxonomy: Taxonomy | None, families: dict[str, str] | None = None
) -> dict[str, Any]:
    """What a model stores to answer at the rank it is sure of: each class's lineage, and the
    regulatory status of every genus and family among them (over all their species in the
    taxonomy and in the model), so that a bundle needs no taxonomy file."""
    lineages = [lineage_of(name, taxonomy, families) for name in classes]
    flags: dict[str, dict[str, Any]] = {}
    for rank in ("genus", "family"):
        flags[rank] = {}
        for taxon in sorted({lin.at(rank) for lin in lineages if lin.at(rank)}):
            known = [s for s in (taxonomy.species if taxonomy else []) if getattr(s, rank) == taxon]
            names = {s.name for s in known}
            outside = [
                None for lin in lineages if lin.at(rank) == taxon and lin.species not in names
            ]
            flags[rank][taxon] = rank_flags([*known, *outside], rank)
    return {"lineage": [lin.to_dict() for lin in lineages], "flags": flags}


@dataclass(frozen=True)
class Declared:
    """A declared name, matched: the rank it names (``Dalbergia sp.`` names a genus) and its
    lineage, and the regulatory flags certain at that rank."""

    query: str
    rank: str
    lineage: Lineage
    flags: list[str] = field(default_factory=list)

    @property
    def taxon(self) -> str:
        return self.lineage.at(self.rank)  # type: ignore[return-value]

    @property
    def label(self) -> str:
        return f"{self.taxon} sp." if self.rank == "genus" else self.taxon


_GENUS_ONLY = re.compile(r"^\s*([A-Za-z]+)(?:\s+(?:sp|spp)\.?)?\s*$")


def match_declared(
    name: str,
    taxonomy: Taxonomy | None,
    classes: dict[str, Lineage] | None = None,
) -> Declared:
    """Match a declared name: a species through the taxonomy (accepted name, synonym, unique trade
    or Chinese name) or a class of the model (``classes``: class name -> lineage); a genus
    (``Dalbergia``, ``Dalbergia sp.``, ``Dalbergia spp.``) or a family (``Fabaceae``) of either.

    Raises:
        JianmuError: an ambiguous name (with the candidates) or one that matches nothing (with the
            closest names).
    """
    classes = classes or {}
    known = [Lineage(s.name, s.genus, s.family) for s in (taxonomy.species if taxonomy else [])]
    known += list(classes.values())
    words = _GENUS_ONLY.match(name)
    if words:
        word = words.group(1).capitalize()
        for rank in ("genus", "family"):
            members = [lin for lin in known if lin.at(rank) == word]
            if members:
                lineage = Lineage(None, word if rank == "genus" else None, members[0].family)
                return Declared(name, rank, lineage, _group_flags(taxonomy, classes, rank, word))
    match = taxonomy.match(name) if taxonomy is not None else None
    if match is not None and match.entry is not None:
        entry = match.entry
        return Declared(
            name, "species", Lineage(entry.name, entry.genus, entry.family), entry.flags
        )
    folded = {_normalize(key): lineage for key, lineage in classes.items()}
    if _normalize(name) in folded:
        return Declared(name, "species", folded[_normalize(name)])
    if match is not None and match.via == "ambiguous":
        raise JianmuError(f"declared name {match.describe()}; declare one of them")
    closest = match.candidates if match is not None else []
    hint = f" (closest: {', '.join(closest)})" if closest else ""
    raise JianmuError(f"declared name {name!r} matches no species, genus or family{hint}")


def _group_flags(taxonomy, classes: dict[str, Lineage], rank: str, taxon: str) -> list[str]:
    members = [s for s in (taxonomy.species if taxonomy else []) if getattr(s, rank) == taxon]
    names = {s.name for s in members}
    outside = [
        None for lin in classes.values() if lin.at(rank) == taxon and lin.species not in names
    ]
    return rank_flags([*members, *outside], rank)["flags"]


@dataclass
class TaxonomyCheck:
    """Matching every class folder of a dataset against a taxonomy."""

    taxonomy: Taxonomy
    matches: list[NameMatch]

    @property
    def unmatched(self) -> list[NameMatch]:
        return [m for m in self.matches if m.entry is None]

    @property
    def collisions(self) -> dict[str, list[str]]:
        """Accepted names that two or more folders map to (e.g. a name and its synonym)."""
        folders: dict[str, list[str]] = {}
        for match in self.matches:
            if match.entry is not None:
                folders.setdefault(match.entry.name, []).append(match.query)
        return {name: found for name, found in folders.items() if len(found) > 1}

    @property
    def ok(self) -> bool:
        return not self.unmatched and not self.collisions


def check_folders(taxonomy: Taxonomy, folder_names: list[str]) -> TaxonomyCheck:
    """Match each folder name; the result lists unmatched folders and name collisions."""
    return TaxonomyCheck(taxonomy, [taxonomy.match(name) for name in folder_names])
