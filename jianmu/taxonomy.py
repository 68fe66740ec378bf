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
