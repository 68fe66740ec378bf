"""Rich renderables for the CLI, built from result objects (no computation here)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from jianmu.taxonomy import Taxonomy, TaxonomyCheck


def taxonomy_table(
    taxonomy: Taxonomy, search: str | None = None, flagged_only: bool = False
) -> Table:
    table = Table(title=f"{taxonomy.title} (v{taxonomy.version})", title_justify="left")
    for column in ("#", "scientific name", "family", "Chinese name", "flags", "synonyms"):
        table.add_column(column, overflow="fold")
    needle = search.casefold() if search else None
    shown = 0
    for number, species in enumerate(taxonomy.species, start=1):
        names = [species.name, *species.synonyms, *species.trade_names, species.chinese_name or ""]
        if needle and not any(needle in name.casefold() for name in names):
            continue
        if flagged_only and not species.flags:
            continue
        flags = Text("; ".join(species.flags), style="bold yellow" if species.flags else "")
        if species.unverified and species.flags:
            flags.append(" (unverified)", style="dim")
        table.add_row(
            str(number),
            Text(species.name, style="italic"),
            species.family,
            species.chinese_name or "",
            flags,
            ", ".join(species.synonyms),
        )
        shown += 1
    table.caption = f"{shown} of {len(taxonomy)} species"
    return table


def taxonomy_summary(taxonomy: Taxonomy) -> Table:
    table = Table(title=f"{taxonomy.domain} taxonomy v{taxonomy.version}", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    species = taxonomy.species
    cites = Counter(s.cites for s in species if s.cites)
    quarantine = Counter(s.quarantine for s in species if s.quarantine)
    table.add_row("species", str(len(species)))
    table.add_row(
        "genera / families",
        f"{len({s.genus for s in species})} / {len({s.family for s in species})}",
    )
    table.add_row("with Chinese name", str(sum(1 for s in species if s.chinese_name)))
    table.add_row("synonyms", str(sum(len(s.synonyms) for s in species)))
    if cites:
        table.add_row("CITES", ", ".join(f"App. {k}: {v}" for k, v in sorted(cites.items())))
    if any(s.hongmu for s in species):
        table.add_row("Hongmu (GB/T 18107)", str(sum(1 for s in species if s.hongmu)))
    if quarantine:
        table.add_row("quarantine", ", ".join(f"{k}: {v}" for k, v in sorted(quarantine.items())))
    table.add_row("flags without a second source", str(sum(1 for s in species if s.unverified)))
    table.add_row("sources", str(len(taxonomy.sources)))
    return table


def taxonomy_check_table(result: TaxonomyCheck) -> Table:
    table = Table(title="class folders vs taxonomy", title_justify="left")
    for column in ("folder", "taxonomy entry", "how"):
        table.add_column(column, overflow="fold")
    collisions = {q for found in result.collisions.values() for q in found}
    for match in result.matches:
        if match.entry is None:
            closest = ", ".join(match.candidates) or "no close name"
            table.add_row(match.query, Text("not found", style="bold red"), f"closest: {closest}")
        else:
            how = match.via
            style = "bold red" if match.query in collisions else ""
            if style:
                how += " (two folders map here)"
            table.add_row(match.query, Text(match.entry.name, style=f"italic {style}"), how)
    matched = len(result.matches) - len(result.unmatched)
    table.caption = f"{matched} of {len(result.matches)} folders matched"
    return table
