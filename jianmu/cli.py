"""The ``jianmu`` command line: options -> load_config -> one library call -> rich output.

User errors (:class:`jianmu.errors.JianmuError`) end as one red line and exit code 2; commands
that audit something exit 1 when they find blocking problems. Heavy modules are imported inside
commands so that ``jianmu --help`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from jianmu.errors import JianmuError

console = Console()
error_console = Console(stderr=True)

EXIT_FINDINGS = 1
EXIT_USER_ERROR = 2


class _Group(TyperGroup):
    """Turns a JianmuError anywhere below into one red line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JianmuError as error:
            error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


app = typer.Typer(
    cls=_Group,
    name="jianmu",
    help="Train, evaluate, export and run image classifiers for border inspection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
taxonomy_app = typer.Typer(help="Species lists: show them, check them against a dataset.")
data_app = typer.Typer(help="Datasets: audit, split, synthesize, preview augmentation.")
app.add_typer(taxonomy_app, name="taxonomy")
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/wood.yaml")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config value: section.key=value (repeatable)"),
]
DomainOption = Annotated[
    str | None, typer.Option("--domain", "-d", help="wood | weed_seed | insect")
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="random seed (config: seed)")]


def _version_callback(value: bool) -> None:
    if value:
        from jianmu import __version__

        console.print(f"jianmu {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """jianmu: wood species, weed seeds and insect pests from photos."""


# --- taxonomy ---------------------------------------------------------------------------------


@taxonomy_app.command("show")
def taxonomy_show(
    domain: Annotated[str, typer.Argument(help="wood | weed_seed | insect, or a taxonomy YAML")],
    search: Annotated[
        str | None, typer.Option("--search", "-q", help="only entries whose names contain this")
    ] = None,
    flagged: Annotated[
        bool, typer.Option("--flagged", help="only entries with a regulatory flag")
    ] = False,
) -> None:
    """Print a taxonomy as a table: names, family, Chinese name, regulatory flags."""
    from jianmu.report.console import taxonomy_table
    from jianmu.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(domain)
    console.print(taxonomy_table(taxonomy, search=search, flagged_only=flagged))


@taxonomy_app.command("check")
def taxonomy_check(
    domain: Annotated[str, typer.Argument(help="wood | weed_seed | insect, or a taxonomy YAML")],
    root: Annotated[
        Path | None, typer.Argument(help="dataset folder whose class folders to match")
    ] = None,
) -> None:
    """Validate a taxonomy file; with ROOT, match every class folder to an entry."""
    from jianmu.report.console import taxonomy_check_table, taxonomy_summary
    from jianmu.taxonomy import check_folders, load_taxonomy

    taxonomy = load_taxonomy(domain)
    console.print(taxonomy_summary(taxonomy))
    if root is None:
        return
    from jianmu.data.samples import find_class_folders

    result = check_folders(taxonomy, find_class_folders(root))
    console.print(taxonomy_check_table(result))
    if not result.ok:
        raise typer.Exit(EXIT_FINDINGS)
