"""Rich renderables for the CLI, built from result objects (no computation here)."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from jianmu.data.samples import natural_key
from jianmu.verdict import IDENTIFIED, UNKNOWN

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
        if match.via == "ambiguous":
            candidates = f"could be: {', '.join(match.candidates)}"
            table.add_row(match.query, Text("ambiguous", style="bold red"), candidates)
        elif match.entry is None:
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


class TrainProgress:
    """A rich progress bar per epoch (loss, accuracy, images/s, ETA), or one line per epoch."""

    def __init__(self, console, quiet: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.quiet = quiet or not console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}"),
            TextColumn("{task.fields[speed]:.1f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=self.quiet,
        )
        self.task = None
        self.prefix = ""

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            f"{self.prefix}epoch {epoch + 1}/{epochs}", total=batches, loss=0.0, acc=0.0, speed=0.0
        )

    def batch(self, loss: float, accuracy: float, images_per_second: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, acc=accuracy, speed=images_per_second)

    def end_epoch(self, row: dict) -> None:
        parts = [f"{self.prefix}epoch {row['epoch']}"]
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_macro_f1"):
            if key in row:
                parts.append(f"{key} {row[key]:.4f}")
        parts.append(f"{row.get('images_per_s', 0):.1f} img/s")
        if row.get("weights") == "ema":
            parts.append("(EMA)")
        self.console.print("  ".join(parts), highlight=False)


def train_summary(result) -> Table:
    table = Table(title=f"run {result.run_dir}", show_header=False, title_justify="left")
    table.add_column("figure")
    table.add_column("value")
    best = result.best_metrics["metrics"]
    table.add_row("classes", str(len(result.classes)))
    table.add_row(
        "epochs run", f"{len(result.history)}" + (" (early stop)" if result.stopped_early else "")
    )
    table.add_row("best epoch", str(result.best_epoch))
    for key in ("val_top1", "val_macro_f1", "val_loss"):
        if key in best:
            table.add_row(key, f"{best[key]:.4f}")
    if result.test_metrics:
        for key in ("test_top1", "test_top5", "test_macro_f1"):
            table.add_row(key, f"{result.test_metrics[key]:.4f}")
        table.add_row("test images", str(result.test_metrics["test_images"]))
    table.add_row("train images/s", f"{best.get('images_per_s', 0):.1f}")
    table.add_row("wall time", f"{result.wall_seconds:.1f} s")
    table.add_row("best checkpoint", str(result.best_checkpoint))
    for warning in result.warnings:
        table.add_row("[yellow]warning[/]", warning)
    return table


@contextmanager
def progress_callback(console, description: str):
    """A transient rich progress bar driven by ``callback(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (f"[bold]{description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def callback(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield callback


def _examples(paths: list[str], limit: int = 3) -> str:
    more = f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def audit_renderables(report) -> list:
    """Per-class table, findings table and the verdict of a dataset audit."""
    kind = "SYNTHETIC dataset (jianmu data synth)" if report.synthetic else "dataset"
    classes = Table(title=f"{kind} {report.root}", title_justify="left")
    for column in ("class", "images", "specimens", "unreadable", "taxonomy"):
        classes.add_column(column, justify="right" if column in ("images", "specimens") else "left")
    unmatched = {u.folder for u in report.unmatched_folders}
    for summary in report.classes:
        taxon = Text(summary.taxon or "", style="italic")
        if summary.name in unmatched:
            taxon = Text("not in taxonomy", style="bold red")
        classes.add_row(
            summary.name,
            str(summary.images),
            str(summary.specimens),
            str(summary.unreadable or ""),
            taxon,
        )
    total = sum(summary.images for summary in report.classes)
    classes.caption = f"{len(report.classes)} classes, {total} images, {report.num_files} files"

    findings = Table(title="findings", title_justify="left")
    for column in ("finding", "count", "examples"):
        findings.add_column(column, overflow="fold")

    def issues(items) -> list[str]:
        return [f"{item.path} ({item.detail})" for item in items]

    def groups(items, joiner: str) -> list[str]:
        return [joiner.join(group.paths) for group in items]

    unmatched_rows = [unmatched.describe() for unmatched in report.unmatched_folders]
    rows = [
        ("unreadable / zero-byte / not an image", issues(report.unreadable)),
        ("conflicting labels (duplicate in 2+ classes)", groups(report.conflicting_labels, " = ")),
        ("exact duplicates", groups(report.exact_duplicates, " = ")),
        ("near duplicates", groups(report.near_duplicates, " ~ ")),
        ("very small images", issues(report.small_images)),
        ("odd modes (converted to RGB)", issues(report.odd_modes)),
        ("EXIF-rotated (rotation applied)", [i.path for i in report.exif_rotated]),
        ("animated (first frame used)", issues(report.animated)),
        ("classes with too few images", list(report.small_classes)),
        ("empty class folders", list(report.empty_classes)),
        ("files skipped (extension)", list(report.skipped_files)),
        ("broken links / link loops", list(report.broken_links)),
        ("folders not in taxonomy", unmatched_rows),
    ]
    for name, items in rows:
        style = (
            "bold red"
            if items and name.startswith(("unreadable", "conflict", "folders", "empty"))
            else ""
        )
        findings.add_row(Text(name, style=style), str(len(items)), _examples(items))
    verdict = (
        Text("no blocking problems", style="bold green")
        if report.ok
        else Text("blocking: " + "; ".join(report.blocking), style="bold red")
    )
    return [
        classes,
        findings,
        *[Text(f"warning: {w}", style="yellow") for w in report.warnings],
        verdict,
    ]


def split_renderables(result) -> list:
    """Images per class and split, and what leaked or could not be stratified."""
    table = Table(title=f"split of {result.root} (seed {result.seed})", title_justify="left")
    splits = list(result.counts)
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    classes = sorted({c for counts in result.counts.values() for c in counts}, key=natural_key)
    for name in classes:
        table.add_row(name, *[str(result.counts[s].get(name, 0)) for s in splits])
    table.add_row(
        Text("total", style="bold"), *[str(sum(result.counts[s].values())) for s in splits]
    )
    out: list = [table]
    if result.excluded:
        out.append(Text(f"{len(result.excluded)} unreadable files left out", style="yellow"))
    for name, missing in result.missing.items():
        out.append(Text(f"class {name} has no {', '.join(missing)} images", style="yellow"))
    for group in result.conflicts:
        out.append(
            Text(f"conflicting labels kept in train: {' = '.join(group.paths)}", style="yellow")
        )
    for leak in result.leaks:
        out.append(
            Text(
                f"LEAK ({leak.kind}): {', '.join(leak.paths)} in {', '.join(leak.splits)}",
                style="bold red",
            )
        )
    if result.leak_free:
        out.append(
            Text("leak-free: no specimen or duplicate group spans two splits", style="bold green")
        )
    return out


def crossval_table(result) -> Table:
    table = Table(title=f"cross-validation {result.out}", title_justify="left")
    for column in ("fold", "train/val/test", "best epoch", "test top-1", "test macro-F1", "time"):
        table.add_column(column, justify="right")
    for fold in result.folds:
        images = fold.images
        table.add_row(
            str(fold.fold) + (" (reused)" if fold.reused else ""),
            f"{images['train']}/{images['val']}/{images['test']}",
            f"{fold.best_epoch}/{fold.epochs_run}",
            f"{fold.test_metrics['test_top1']:.4f}",
            f"{fold.test_metrics['test_macro_f1']:.4f}",
            f"{fold.wall_seconds:.0f} s",
        )
    table.add_row(
        Text("mean ± std", style="bold"),
        "",
        "",
        f"{result.mean('test_top1'):.4f} ± {result.std('test_top1'):.4f}",
        f"{result.mean('test_macro_f1'):.4f} ± {result.std('test_macro_f1'):.4f}",
        f"{result.wall_seconds:.0f} s",
    )
    return table


def eval_summary(result) -> Table:
    table = Table(title=f"evaluation of {result.model} on {result.data} ({result.split})",
                  show_header=True, title_justify="left")  # fmt: skip
    table.add_column("figure")
    table.add_column("images", justify="right")
    if result.specimen_metrics:
        table.add_column("specimens", justify="right")
    specimen = result.specimen_metrics or {}
    rows = [("top1", "top-1"), ("top3", "top-3"), ("top5", "top-5"),
            ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")]  # fmt: skip
    for key, label in rows:
        if key in result.metrics:
            cells = [label, f"{result.metrics[key]:.4f}"]
            if result.specimen_metrics:
                cells.append(f"{specimen[key]:.4f}" if key in specimen else "")
            table.add_row(*cells)
    extra = [("genus_top1", "genus top-1"), ("family_top1", "family top-1")]
    for key, label in extra:
        if result.metrics.get(key) is not None:
            table.add_row(label, f"{result.metrics[key]:.4f}")
    table.add_row(
        "ECE before -> after",
        f"{result.metrics['ece_before']:.4f} -> {result.metrics['ece_after']:.4f} "
        f"(T={result.metrics['temperature']:.3f})",
    )
    table.add_row("count", str(result.metrics["count"]))
    if result.tta:
        table.add_row("TTA gain (top-1)", f"{result.tta['gain']:+.4f}")
    if result.open_set:
        unknown = result.open_set
        table.add_row("unknown rule", f"{unknown['rule']} >= {unknown['threshold']:.4g}")
        # a model with rank answers says "Dalbergia sp." where one without says "unknown"
        table.add_row("known not named at species", f"{unknown['known_flagged_unknown']:.4f}")
        if "unknown_rejection" in unknown:
            table.add_row("unknown-species rejected", f"{unknown['unknown_rejection']:.4f}")
    ranks = result.metrics.get("ranks")
    if ranks:
        shares = ", ".join(
            f"{rank} {ranks[rank]:.1%}" for rank in ("species", "genus", "family", "unknown")
        )
        table.add_row("answered at", shares)
        table.add_row("answered wrong (any rank)", f"{ranks['wrong']:.4f}")
    if result.unreadable:
        table.add_row("[yellow]unreadable images[/]", str(len(result.unreadable)))
    table.caption = f"report: {result.page}"
    return table


def export_table(parity: dict) -> Table:
    """Parity figures of an export: the exported model against PyTorch."""
    table = Table(title="parity: exported vs PyTorch", title_justify="left")
    table.add_column("parity check")
    table.add_column("value", justify="right")
    rows = [
        ("validation images", f"{parity['images']}"),
        ("top-1 agreement", f"{parity['top1_agreement']:.2%}"),
        ("max |logit difference|", f"{parity['max_abs_logit_diff']:.3g}"),
        ("top-1 PyTorch", f"{parity['top1_reference']:.4f}"),
        ("top-1 exported", f"{parity['top1_export']:.4f}"),
        ("random tensors: max |logit difference|", f"{parity['random_max_abs_logit_diff']:.3g}"),
        ("random tensors: top-1 agreement", f"{parity['random_top1_agreement']:.2%}"),
    ]
    if "int8_top1_drop_points" in parity:
        rows.append(("int8 top-1 drop (points)", f"{parity['int8_top1_drop_points']:.2f}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def add_species_lines(result) -> list[str]:
    """What ``jianmu add-species`` did (an :class:`~jianmu.engine.add_species.AddSpeciesResult`)."""
    lines = []
    for each in result.added:
        named = each.name if each.species in (None, each.name) else f"{each.name} ({each.species})"
        lines.append(
            f"added {named}: {len(each.photos)} photos, {len(set(each.specimens))} specimens"
        )
    lines += [f"removed {name}" for name in result.removed]
    check = result.check
    if check.get("photos"):
        lines.append(
            f"check on the {check['photos']} added photos: kept logits equal to the base "
            f"(max diff {check['kept_max_abs_logit_diff']:.2g}), known classes in the same order "
            f"{check['known_order_agreement']:.0%}, given photos answered as their class "
            f"{check['added_top1_on_given_photos']:.0%}"
        )
    lines.append(
        f"wrote {result.path} ({result.classes} classes, {result.form}, {result.seconds:.1f} s)"
    )
    return lines


# --- predict --------------------------------------------------------------------------------------

_FAILED_SHOWN = 20


@contextmanager
def predict_progress(console):
    """A transient progress bar for ``jianmu predict``: images done, images/s, time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TimeRemainingColumn,
    )

    class SpeedColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="cyan")

    columns = ("[bold]classifying", BarColumn(), MofNCompleteColumn(), SpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("classifying", total=None)

        def callback(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield callback


def _shares(top: list[dict], other: float | None) -> str:
    parts = [f"{entry['class']} {entry['probability']:.2f}" for entry in top]
    if other:
        parts.append(f"other {other:.2f}")
    return ", ".join(parts)


def _verdict_text(record: dict, unreadable: str = "no readable image") -> Text:
    """The answer: the verdict, or the genus or family answered, or why the file was not read."""
    verdict = record.get("verdict")
    if verdict is None:
        return Text(record.get("status") if record.get("status", "ok") != "ok" else unreadable,
                    style="bold red")  # fmt: skip
    if record.get("rank") in ("genus", "family"):
        return Text(f"{record.get('taxon')} (species: lab)", style="bold cyan")
    return Text(verdict, style="green" if verdict == IDENTIFIED else "bold yellow")


def _decision_text(record: dict) -> Text:
    decision = record.get("decision") or ""
    style = {"consistent": "green", "inconsistent": "bold red"}.get(decision, "bold yellow")
    reason = f" ({record['reason']})" if record.get("reason") else ""
    return Text(decision + reason, style=style)


def _flags_text(flags: list[str], possible: list[str] | None = None) -> Text:
    text = Text("; ".join(flags), style="bold magenta" if flags else "")
    if possible:
        text.append(("; " if flags else "") + "; ".join(possible), style="yellow")
    return text


def predict_images_table(images: list[dict]) -> Table:
    """One row per image: verdict (or why it could not be read), top-k shares, species, flags."""
    table = Table(title="images", title_justify="left")
    judged = any("decision" in record for record in images)
    columns = ["image", "answer", "top (calibrated)", "species", "flags"]
    for column in columns + (["declared", "decision"] if judged else []):
        table.add_column(column, overflow="fold")
    for record in images:
        species = " ".join(filter(None, (record.get("species"), record.get("chinese_name"))))
        cells = [
            record["path"],
            _verdict_text(record),
            _shares(record["top"], record["other"]),
            Text(species, style="italic"),
            _flags_text(record["flags"], record.get("possible_flags")),
        ]
        if judged:
            cells += [record.get("declared") or "", _decision_text(record)]
        table.add_row(*cells)
    return table


def predict_renderables(result, show_images: bool = False) -> list:
    """Summary, identified species, specimens and failed files of a ``jianmu predict`` run."""
    summary = result.summary
    out: list = []
    if summary.get("consequences"):  # what the inspector must act on comes first
        consequences = Table(title="regulatory consequences", title_justify="left")
        consequences.add_column("specimen", overflow="fold")
        consequences.add_column("consequence", overflow="fold", style="bold magenta")
        for found in summary["consequences"]:
            consequences.add_row(str(found["specimen"]), found["consequence"])
        out.append(consequences)
    if show_images and result.images:
        out.append(predict_images_table(result.images))
    species = Table(title="identified species", title_justify="left")
    for column in ("class", "species", "Chinese name", "images", "flags"):
        species.add_column(
            column, overflow="fold", justify="right" if column == "images" else "left"
        )
    for name, count in summary["per_species"].items():
        record = result.species.get(name, {})
        species.add_row(
            name,
            Text(record.get("species") or "", style="italic"),
            record.get("chinese_name") or "",
            str(count),
            _flags_text(record.get("flags") or []),
        )
    if summary["per_species"]:
        out.append(species)
    if result.specimens:
        out.append(_specimen_table(result.specimens))
    if result.failures:
        failed = Table(title="files that could not be read", title_justify="left")
        failed.add_column("file", overflow="fold")
        failed.add_column("reason", style="red")
        for path, reason in result.failures[:_FAILED_SHOWN]:
            failed.add_row(path, reason)
        if len(result.failures) > _FAILED_SHOWN:
            failed.caption = f"{len(result.failures) - _FAILED_SHOWN} more in the output file"
        out.append(failed)
    out.append(_predict_summary_table(summary))
    out.extend(Text(f"warning: {w}", style="yellow") for w in summary.get("warnings", []))
    return out


def _specimen_table(specimens: list[dict], limit: int = 30) -> Table:
    table = Table(title="specimens", title_justify="left")
    judged = any("decision" in record for record in specimens)
    columns = ["specimen", "images", "answer", "top (mean)", "flags"]
    columns += ["declared", "decision"] if judged else []
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "images" else "left")
    for record in specimens[:limit]:
        cells = [
            record["specimen"],
            f"{record['ok_images']}/{record['images']}",
            _verdict_text(record),
            _shares(record["top"], record["other"]),
            _flags_text(record["flags"], record.get("possible_flags")),
        ]
        if judged:
            cells += [record.get("declared") or "", _decision_text(record)]
        table.add_row(*cells)
    if len(specimens) > limit:
        table.caption = f"{len(specimens) - limit} more in the output file"
    return table


def _predict_summary_table(summary: dict) -> Table:
    title = f"{summary['model']} ({summary['model_format']})"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("images", str(summary["images"]))
    ranks = summary.get("ranks") or {}
    counts = {
        "identified": summary["identified"],
        "partial": ranks.get("genus", 0) + ranks.get("family", 0),
        "unknown": ranks.get("unknown", summary["unknown"]),
        "flagged": summary["flagged"],
        "possible": summary.get("possibly_flagged", 0),
        "failed": summary["failed"],
    }
    rows = (
        (f"{IDENTIFIED} (species)", "identified", "green"),
        ("genus or family only (species: lab)", "partial", "bold cyan"),
        (UNKNOWN, "unknown", "bold yellow"),
        ("regulated for sure", "flagged", "bold magenta"),
        ("possibly regulated", "possible", "yellow"),
        ("could not be read", "failed", "bold red"),
    )
    for label, key, style in rows:
        table.add_row(label, Text(str(counts[key]), style=style if counts[key] else ""))
    for decision, count in (summary.get("decisions") or {}).items():
        table.add_row(f"declarations {decision}", str(count))
    regulated = summary.get("regulated_specimens") or {}
    if regulated and summary.get("specimens"):
        table.add_row(
            "specimens regulated for sure / possibly",
            f"{regulated.get('certain', 0)} / {regulated.get('possible', 0)}",
        )
    if summary.get("specimens"):
        table.add_row("specimens", str(summary["specimens"]))
    if summary.get("skipped"):
        table.add_row("files skipped (not an image extension)", str(summary["skipped"]))
    if summary.get("resumed"):
        table.add_row("taken from the previous output", str(summary["resumed"]))
    speed = f"{summary['images_per_s']:.1f} images/s, {summary['seconds']:.1f} s"
    table.add_row("speed", speed + (f" (TTA x{summary['views']})" if summary["tta"] else ""))
    return table
