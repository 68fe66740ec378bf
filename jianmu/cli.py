"""The ``jianmu`` command line: options -> load_config -> one library call -> rich output.

Each command maps its options to config keys (``--top-k`` is ``predict.top_k``, ``--out`` is
``out``) on top of ``--config`` and ``--set``, and makes the one call ``jianmu.X(config, ...)``
makes: the command line and the library give the same results. User errors
(:class:`jianmu.errors.JianmuError`) end as one red line and exit code 2; commands that audit
something exit 1 when they find blocking problems. Heavy modules are imported inside commands so
that ``jianmu --help`` starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from jianmu.config import DOMAINS, load_config
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
            # escaped: a message may hold brackets (pip install 'jianmu[tracking]', --set a=[b])
            message = f"[bold red]error:[/] {escape(str(error))}"
            error_console.print(message, highlight=False, soft_wrap=True)
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
record_app = typer.Typer(help="Inspection records: has anything changed since a run?")
app.add_typer(record_app, name="record")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/wood.yaml")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config value: section.key=value (repeatable)"),
]
DOMAIN_HELP = " | ".join(DOMAINS)
DomainOption = Annotated[str | None, typer.Option("--domain", "-d", help=DOMAIN_HELP)]
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
    domain: Annotated[str, typer.Argument(help=f"{DOMAIN_HELP}, or a taxonomy YAML")],
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
    domain: Annotated[str, typer.Argument(help=f"{DOMAIN_HELP}, or a taxonomy YAML")],
    root: Annotated[
        Path | None, typer.Argument(help="dataset folder whose class folders to match")
    ] = None,
) -> None:
    """Validate a taxonomy file; with ROOT, match every class folder to an entry."""
    from jianmu.data.samples import find_class_folders
    from jianmu.report.console import taxonomy_check_table, taxonomy_summary
    from jianmu.taxonomy import check_folders, load_taxonomy

    taxonomy = load_taxonomy(domain)
    folders = find_class_folders(root) if root is not None else None
    console.print(taxonomy_summary(taxonomy))
    if folders is None:
        return
    result = check_folders(taxonomy, folders)
    console.print(taxonomy_check_table(result))
    if not result.ok:
        raise typer.Exit(EXIT_FINDINGS)


# --- data ----------------------------------------------------------------------------------------


def _data_config(config_path, overrides, domain=None, seed=None, root=None):
    return load_config(
        config_path, overrides or [], data__domain=domain, seed=seed, data__root=root
    )


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="dataset folder: ROOT/<class>/<images>")],
    config_path: ConfigOption = None,
    domain: DomainOption = None,
    overrides: SetOption = None,
    json_path: Annotated[
        Path, typer.Option("--json", help="where to write the audit as JSON")
    ] = Path("audit.json"),
    no_taxonomy: Annotated[
        bool, typer.Option("--no-taxonomy", help="skip matching folders to the taxonomy")
    ] = False,
) -> None:
    """Audit a dataset (nothing is modified); exit 1 when blocking problems are found."""
    from jianmu.data.audit import audit_dataset
    from jianmu.report.console import audit_renderables, progress_callback
    from jianmu.taxonomy import load_taxonomy

    config = _data_config(config_path, overrides, domain, root=root)
    taxonomy = None if no_taxonomy else load_taxonomy(config.data.taxonomy or config.data.domain)
    with progress_callback(console, "auditing") as progress:
        report = audit_dataset(root, config.data, taxonomy=taxonomy, progress=progress)
    for renderable in audit_renderables(report):
        console.print(renderable)
    _write_json(json_path, report.to_dict())
    console.print(f"audit written to {json_path} ({report.seconds:.2f} s)")
    if not report.ok:
        raise typer.Exit(EXIT_FINDINGS)


@data_app.command("split")
def data_split(
    root: Annotated[Path, typer.Argument(help="dataset folder: ROOT/<class>/<images>")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest CSV to write")],
    config_path: ConfigOption = None,
    overrides: SetOption = None,
    seed: SeedOption = None,
) -> None:
    """Write a stratified, specimen-grouped, leak-free split manifest CSV.

    Columns: path (relative to ROOT), class, specimen, split (train/val/test), sha256.
    """
    from jianmu.data.audit import scan_images
    from jianmu.data.samples import find_samples
    from jianmu.data.split import split_samples, write_manifest
    from jianmu.report.console import progress_callback, split_renderables

    config = _data_config(config_path, overrides, seed=seed, root=root)
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    with progress_callback(console, "hashing") as progress:
        records = scan_images([s.path for s in samples], config.data, progress)
    result = split_samples(samples, records, config.data, seed=config.seed, root=root)
    write_manifest(out, result.rows)
    for renderable in split_renderables(result):
        console.print(renderable)
    console.print(f"manifest written to {out} ({len(result.rows)} images, seed {config.seed})")
    if result.leaks:
        raise typer.Exit(EXIT_FINDINGS)


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path, typer.Argument(help="folder to create (a previous synthetic set is replaced)")
    ],
    domain: Annotated[str, typer.Option("--domain", "-d", help=DOMAIN_HELP)] = "wood",
    classes: Annotated[int, typer.Option("--classes", min=1, help="number of classes")] = 5,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="images per class")] = 20,
    specimens: Annotated[
        int, typer.Option("--specimens", min=1, help="specimen sub-folders per class")
    ] = 4,
    size: Annotated[int, typer.Option("--size", min=32, help="image side in pixels")] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    generic_names: Annotated[
        bool,
        typer.Option(
            "--generic-names", help="name classes synthetic_class_NN instead of taxonomy species"
        ),
    ] = False,
) -> None:
    """Generate a procedural (SYNTHETIC) sample set for demos and tests."""
    from jianmu.data.synth import generate_dataset
    from jianmu.report.console import progress_callback
    from jianmu.taxonomy import load_taxonomy

    names = None
    if not generic_names:
        species = load_taxonomy(domain).names
        if classes > len(species):
            raise JianmuError(f"--classes {classes}: the {domain} taxonomy has {len(species)}")
        step = len(species) / classes
        names = [species[int(i * step)].replace(" ", "_") for i in range(classes)]
    with progress_callback(console, "generating") as progress:
        result = generate_dataset(
            out, domain, classes, per_class, size, specimens, seed, names, progress
        )
    console.print(
        f"[bold]SYNTHETIC[/] {domain} set: {len(result.class_names)} classes x {per_class} "
        f"images ({specimens} specimens each) in {result.root}"
    )


@data_app.command("preview")
def data_preview(
    config_path: ConfigArg,
    root: Annotated[Path, typer.Argument(help="dataset folder to take sample images from")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write")] = Path("preview.png"),
    images: Annotated[int, typer.Option("--images", min=1, help="source images")] = 4,
    per_image: Annotated[int, typer.Option("--per-image", min=1, help="views per image")] = 4,
    overrides: SetOption = None,
    seed: SeedOption = None,
) -> None:
    """Write a PNG grid of augmented samples, as the training pipeline would see them."""
    from jianmu.data.preview import render_preview
    from jianmu.data.samples import find_samples

    config = _data_config(config_path, overrides, seed=seed)
    samples = find_samples(root, config.data.extensions, config.data.specimen_pattern)
    by_class: dict[str, Path] = {}
    for sample in samples:
        by_class.setdefault(sample.label, sample.path)
    chosen = (list(by_class.values()) + [s.path for s in samples])[:images]
    render_preview(
        config.augment, chosen, out, config.model.img_size, per_image=per_image, seed=config.seed
    )
    console.print(f"preview of {len(chosen)} images x {per_image} augmentations written to {out}")


def _write_json(path: Path, data) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    except OSError as error:
        raise JianmuError(f"cannot write {path}: {error.strerror or error}") from None


# --- train ---------------------------------------------------------------------------------------


@app.command("train")
def train_command(
    config_path: Annotated[
        Path | None, typer.Argument(metavar="CONFIG", help="YAML config, e.g. configs/wood.yaml")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="dataset root (data.root)")] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="split manifest CSV (data.manifest)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (out)")] = None,
    overrides: SetOption = None,
    seed: SeedOption = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="train.epochs")] = None,
    folds: Annotated[
        int | None, typer.Option("--folds", help="k-fold cross-validation: one run per fold")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this folder")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="one line per epoch")] = False,
) -> None:
    """Train a classifier on an image folder; writes checkpoints, metrics and curves."""
    if resume is None and config_path is None:
        raise JianmuError("give a CONFIG (e.g. configs/wood.yaml) or --resume RUN_DIR")
    config = load_config(
        config_path,
        overrides or [],
        data__root=data,
        data__manifest=manifest,
        out=out,
        seed=seed,
        train__epochs=epochs,
        train__quiet=quiet or None,
    )
    from jianmu.report.console import TrainProgress, crossval_table, train_summary

    # Under torchrun only rank 0 reports; the other ranks train silently.
    output = console if int(os.environ.get("RANK", "0")) == 0 else Console(quiet=True)
    with TrainProgress(output, quiet=config.train.quiet) as progress:
        if folds is not None:
            from jianmu.engine.crossval import cross_validate

            output.print(crossval_table(cross_validate(config, folds, reporter=progress)))
            return
        from jianmu.engine.train import train

        result = train(config, resume=resume, reporter=progress)
    output.print(train_summary(result))


# --- eval ----------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="run folder (its best checkpoint), checkpoint .safetensors, or an exported "
            ".onnx / .torchscript bundle"
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="dataset root (data.root)")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="report folder (out; default: eval)")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="manifest CSV (data.manifest); evaluates one --split"),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="train | val | test (eval.split; default test)")
    ] = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="the flips/quarter turns the model trained with, averaged (eval.tta; default: as "
            "the model was calibrated)",
        ),
    ] = None,
    open_set: Annotated[
        Path | None,
        typer.Option(
            "--open-set", help="CONFIG: run the leave-species-out protocol (trains one model each)"
        ),
    ] = None,
    hold_out: Annotated[
        list[str] | None,
        typer.Option("--hold-out", help="with --open-set: hold out only this class (repeatable)"),
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Evaluate a model (per class, specimen, calibration, unknowns) or run the open-set test."""
    if data is None:
        raise JianmuError("give --data ROOT (the images to evaluate on)")
    if open_set is not None:
        from jianmu.engine.leave_species_out import leave_species_out, open_set_markdown
        from jianmu.report.console import TrainProgress
        from jianmu.rundir import ExperimentDir

        config = load_config(open_set, overrides or [], data__root=data, out=out)
        with TrainProgress(console, quiet=True) as progress:
            result = leave_species_out(config, reporter=progress, held_out=hold_out or None)
        console.print(open_set_markdown(result))
        console.print(f"best rule: {result.best_rule}; tables in {result.out}")
        if result.unseen_ranks:
            fitted = ExperimentDir(result.out).rank_thresholds
            console.print(f"rank thresholds fitted on the held-out species: {fitted} (train with "
                          f"--set calibration.open_set={result.out})")  # fmt: skip
        return
    if model is None:
        raise JianmuError("give a MODEL (run folder, checkpoint or bundle), or --open-set CONFIG")
    config = load_config(
        config_path, overrides or [], data__root=data, data__manifest=manifest,
        eval__split=split, eval__tta=tta, out=out,
    )  # fmt: skip
    from jianmu.engine.evaluate import evaluate
    from jianmu.report.console import eval_summary

    console.print(eval_summary(evaluate(config, model)))


# --- compare -------------------------------------------------------------------------------------


@app.command("compare")
def compare_command(
    old: Annotated[
        Path,
        typer.Argument(metavar="OLD_MODEL", help="the model in use: run folder, checkpoint, .onnx"),
    ],
    new: Annotated[
        Path, typer.Argument(metavar="NEW_MODEL", help="the candidate, in any of those forms")
    ],
    data: Annotated[Path | None, typer.Option("--data", help="dataset root (data.root)")] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="the frozen split manifest CSV (data.manifest)"),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="train | val | test (eval.split; default test)")
    ] = None,
    unknown: Annotated[
        list[Path] | None,
        typer.Option(
            "--unknown",
            help="a folder of class folders of species neither model knows, for unknown "
            "rejection (repeatable)",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="folder for compare.json/.md and both eval reports (out; default: runs/compare)",
        ),
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Release gate: evaluate OLD and NEW on the same frozen split, side by side, and name every
    figure of NEW that regressed beyond its tolerance (compare.tolerances; README, 'Release gate').

    Exit codes: 0 no regression; 1 a figure regressed (each one named); 2 bad input.
    """
    config = load_config(
        config_path, overrides or [], data__root=data, data__manifest=manifest,
        eval__split=split, out=out,
    )  # fmt: skip
    from jianmu.engine.compare import compare
    from jianmu.report.compare_report import COMPARE_JSON, compare_table

    result = compare(config, old, new, unknown or [])
    console.print(compare_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    folder = result.files[COMPARE_JSON].parent
    console.print(f"compare.json, compare.md and both eval reports in {folder}", highlight=False)
    for message in result.regressions:
        error_console.print(f"[bold red]regression:[/] {message}", highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(EXIT_FINDINGS)


# --- predict -------------------------------------------------------------------------------------

EXIT_INTERRUPTED = 130


ModelArgument = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL", help="ONNX bundle (.onnx), TorchScript bundle, checkpoint or run folder"
    ),
]
InputsArgument = Annotated[
    list[Path],
    typer.Argument(
        metavar="INPUT", help="image files, folders (searched recursively) or .txt/.lst lists"
    ),
]
ResultsOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="results file: .csv, .json or .jsonl (one row per image)"),
]
HtmlOption = Annotated[
    Path | None, typer.Option("--html", help="also write a self-contained HTML page")
]
TopKOption = Annotated[
    int | None, typer.Option("--top-k", min=1, help="species shown per image (default 3)")
]
TtaOption = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="average the flips/quarter turns the model trained with (8 views for end grain, "
        "4 for insect wings; that many times slower)",
    ),
]
SpecimenPatternOption = Annotated[
    str | None,
    typer.Option(
        "--specimen-pattern",
        help="regex on file names whose group 'specimen' (or group 1) names the specimen "
        "(default: the sub-folder under INPUT)",
    ),
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="skip files already in --out and append to it")
]
BatchSizeOption = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="default: per model format")
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="decoding threads (default: CPUs)")
]


NoGateOption = Annotated[
    bool,
    typer.Option(
        "--no-quality-gate",
        help="judge every readable photo, however blurred or badly exposed (quality.gate=false)",
    ),
]
OperatorOption = Annotated[
    str | None, typer.Option("--operator", help="who ran it, for the inspection record")
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="the capture device, for the inspection record")
]
RecordOption = Annotated[
    Path | None,
    typer.Option(
        "--record", help="inspection record (default: <out stem>.record.json beside --out/--html)"
    ),
]


def _capture_options(no_gate: bool, operator, device, record) -> dict:
    """The quality-gate and inspection-record options of predict and verify, as config keys."""
    return {
        "quality__gate": False if no_gate else None,
        "predict__operator": operator,
        "predict__device": device,
        "predict__record": record,
    }


@app.command("predict")
def predict_command(
    model: ModelArgument,
    inputs: InputsArgument,
    out: ResultsOption = None,
    html: HtmlOption = None,
    top_k: TopKOption = None,
    tta: TtaOption = None,
    specimen_pattern: SpecimenPatternOption = None,
    resume: ResumeOption = False,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    no_quality_gate: NoGateOption = False,
    operator: OperatorOption = None,
    device: DeviceOption = None,
    record: RecordOption = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Classify field photos: the answer at the rank the model is sure of, calibrated candidates,
    regulatory flags.

    Every file gets a row, readable or not; a photo that fails the quality gate gets 'retake' and
    why (blurred, too dark, ...), never a species. With --out or --html an inspection record
    (<stem>.record.json, hashes of inputs and model; `jianmu record check`) is written beside.
    Exit codes: 0 every file was read; 1 some files could not be read (their rows say why); 2 user
    error (bad model, no inputs, bad option); 130 interrupted by Ctrl-C (the rows done are saved:
    run again with --resume).
    """
    config = load_config(
        config_path, overrides or [], out=out, predict__html=html, predict__top_k=top_k,
        predict__tta=tta, predict__specimen_pattern=specimen_pattern,
        predict__resume=resume or None, predict__batch_size=batch_size, predict__workers=workers,
        **_capture_options(no_quality_gate, operator, device, record),
    )  # fmt: skip
    from jianmu.engine.predict import predict

    result = _classify(
        lambda progress: predict(config, model, inputs, progress, out is None), out is None
    )
    if result.failed:
        raise typer.Exit(EXIT_FINDINGS)


@app.command("verify")
def verify_command(
    model: ModelArgument,
    inputs: InputsArgument,
    declared: Annotated[
        str | None,
        typer.Option(
            "--declared",
            help="one declared taxon for every input: a species (name, synonym, trade or Chinese "
            "name), a genus ('Dalbergia sp.') or a family",
        ),
    ] = None,
    declarations: Annotated[
        Path | None,
        typer.Option(
            "--declarations",
            help="CSV with the columns 'declared' and 'specimen' or 'path' (relative to the CSV)",
        ),
    ] = None,
    out: ResultsOption = None,
    html: HtmlOption = None,
    top_k: TopKOption = None,
    tta: TtaOption = None,
    specimen_pattern: SpecimenPatternOption = None,
    resume: ResumeOption = False,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    no_quality_gate: NoGateOption = False,
    operator: OperatorOption = None,
    device: DeviceOption = None,
    record: RecordOption = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Check declarations: is each specimen what its papers say?

    Per specimen: consistent, inconsistent (with what it looks like) or cannot decide (refer to
    lab), and the regulatory consequence. Exit codes: 0 every declaration consistent and every
    file read; 1 some files could not be read; 2 user error (bad model, a declared name that
    matches nothing or several species, no declaration); 3 some declarations cannot be decided;
    4 some declarations are inconsistent; 130 interrupted by Ctrl-C.
    """
    config = load_config(
        config_path, overrides or [], out=out, predict__html=html, predict__top_k=top_k,
        predict__tta=tta, predict__specimen_pattern=specimen_pattern,
        predict__resume=resume or None, predict__batch_size=batch_size, predict__workers=workers,
        verify__declared=declared, verify__declarations=declarations,
        **_capture_options(no_quality_gate, operator, device, record),
    )  # fmt: skip
    from jianmu.engine.verify import exit_code, verify

    result = _classify(
        lambda progress: verify(config, model, inputs, progress, out is None), out is None
    )
    code = exit_code(result)
    if code:
        raise typer.Exit(code)


def _classify(run, show_images: bool):
    """Run predict or verify with a progress bar, print the tables (each image's too, with
    ``show_images``), say what was written; exit 130 when interrupted (the rows done are saved).
    Returns the result."""
    from jianmu.engine.predict import PredictInterrupted
    from jianmu.report.console import predict_progress, predict_renderables

    with predict_progress(console) as progress:
        try:
            result = run(progress)
        except PredictInterrupted as interrupted:
            result = interrupted.result
    for renderable in predict_renderables(result, show_images=show_images):
        console.print(renderable)
    for path in result.files:
        console.print(f"written: {path}", highlight=False)
    if result.interrupted:
        error_console.print(
            f"[bold yellow]interrupted:[/] {result.summary['images']} images saved; "
            "run again with --resume to finish",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    return result


# --- review and import ---------------------------------------------------------------------------


@app.command("review")
def review_command(
    predictions: Annotated[
        Path,
        typer.Argument(
            metavar="PREDICTIONS", help="a predict or verify output: .csv, .jsonl or .json"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="folder for review.html and review.csv (default: review/ beside PREDICTIONS)",
        ),
    ] = None,
    domain: DomainOption = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write the lab's review queue: a self-contained page and a CSV of the specimens that need
    an expert (unknown, genus or family only, low margin, declaration not borne out), each with
    its photos, candidates and reasons, and a form that saves the expert's names as a CSV.

    The review: settings choose what is sent (--set review.max_margin=0.3; review.reasons
    lists the reasons that count). Exit codes: 0 written (also when nothing needs review); 2 user
    error.
    """
    config = load_config(config_path, overrides or [], out=out, data__domain=domain)
    from jianmu.engine.review import review
    from jianmu.report.review_page import review_renderables

    for renderable in review_renderables(review(config, predictions)):
        console.print(renderable, highlight=False, soft_wrap=True)


@data_app.command("import")
def data_import(
    reviewed: Annotated[
        Path,
        typer.Argument(
            metavar="REVIEWED", help="review CSV with reviewed_taxon and reviewer filled in"
        ),
    ],
    into: Annotated[Path, typer.Option("--into", help="dataset folder: ROOT/<class>/<images>")],
    domain: DomainOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and show what would be copied; copy nothing")
    ] = False,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Copy the photos an expert named into the dataset's class folders (never moved, never over
    a file), a specimen whole or not at all, and log each in ROOT/IMPORTS.jsonl.

    Names are matched through the taxonomy (synonyms, trade and Chinese names); photos already in
    the dataset (same bytes, or a near-duplicate perceptual hash) are refused. Exit codes: 0 every
    named specimen imported (or imported before); 1 some refused (the rest imported); 2 user error.
    """
    config = _data_config(config_path, overrides, domain)
    from jianmu.data.importer import import_reviewed
    from jianmu.report.console import progress_callback
    from jianmu.report.review_page import import_renderables

    with progress_callback(console, "hashing the dataset") as progress:
        result = import_reviewed(config, reviewed, into, dry_run=dry_run, progress=progress)
    for renderable in import_renderables(result):
        console.print(renderable, highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(EXIT_FINDINGS)


# --- record --------------------------------------------------------------------------------------

EXIT_RECORD_CHANGED = 5


@record_app.command("check")
def record_check(
    record: Annotated[
        Path,
        typer.Argument(metavar="RECORD", help="a <stem>.record.json written by predict or verify"),
    ],
) -> None:
    """Recompute a record's hash and re-hash its inputs and model: is anything changed since?

    Exit codes: 0 the record, its inputs and its model are unchanged (a model that is not here to
    re-hash is noted); 5 the record was altered, or an input or the model changed or is missing;
    2 not a record (unreadable, not JSON, no hash).
    """
    from jianmu.record import check_record

    check = check_record(record)
    for line in check.lines():
        console.print(line, highlight=False, soft_wrap=True)
    if not check.ok:
        error_console.print(
            f"[bold red]changed:[/] {record} no longer matches its run", highlight=False
        )
        raise typer.Exit(EXIT_RECORD_CHANGED)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="run folder or checkpoint .safetensors")],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="onnx | torchscript (export.format)")
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="static int8 quantization (ONNX), accuracy-guarded")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="bundle path (default: beside the checkpoint)"),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="dataset root for the parity check (default: the run's)"),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="manifest CSV (default: the run's)")
    ] = None,
    gallery: Annotated[
        int | None,
        typer.Option(
            "--gallery",
            min=0,
            help="reference photos per class carried as small JPEGs (export.gallery; mind the "
            "data set's licence)",
        ),
    ] = None,
    gallery_licence: Annotated[
        str | None,
        typer.Option("--gallery-licence", help="the reference photos' licence note, stored"),
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Export a model to one self-contained, parity-checked bundle file.

    Exit codes: 0 exported; 1 the parity check failed (no bundle written); 2 bad input.
    """
    # Export settings come from --config / --set, not from the training run's stored config: that
    # holds every default of the jianmu that trained it, which would pin outdated ones.
    config = load_config(
        config_path, overrides or [], out=out, data__root=data, data__manifest=manifest,
        export__format=format, export__int8=int8 or None, export__gallery=gallery,
        export__gallery_licence=gallery_licence,
    )  # fmt: skip
    from jianmu.engine.export import ExportCheckError, export
    from jianmu.report.console import export_table

    try:
        result = export(config, model)
    except ExportCheckError as error:
        console.print(export_table(error.parity))
        error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FINDINGS) from None
    console.print(export_table(result.parity))
    size = f"{result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s"
    console.print(f"exported {result.path} ({size})", highlight=False, soft_wrap=True)
    if result.gallery_bytes:
        count = result.meta["gallery"]["count"]
        added = f"+{result.gallery_bytes / 1e6:.2f} MB"
        console.print(f"reference gallery: {count} photos ({added})", highlight=False)
    for warning in result.warnings:
        error_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command("add-species")
def add_species_command(
    model: Annotated[Path, typer.Argument(help="ONNX bundle, run folder or checkpoint")],
    folders: Annotated[
        list[Path] | None,
        typer.Argument(help="class folders of the species to add (photos, or specimen folders)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="the new model (.onnx / .safetensors)")
    ] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="a class to drop (repeatable)")
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Add species to a model without retraining (the network stays frozen), or remove some.

    Exit codes: 0 written; 2 bad input or the check failed (nothing written).
    """
    config = load_config(config_path, overrides or [], out=out)
    from jianmu.engine.add_species import add_species
    from jianmu.report.console import add_species_lines

    result = add_species(config, model, folders or [], remove or [])
    for line in add_species_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    for warning in result.warnings:
        error_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command("bench")
def bench_command(
    suite: Annotated[str, typer.Argument(help="suite name in configs/bench/ (ci, scale) or YAML")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="folder (default: runs/bench/SUITE)")
    ] = None,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="rewrite the suite's baseline on purpose")
    ] = False,
) -> None:
    """Benchmark accuracy and speed; compare with the committed baseline.

    Exit codes: 0 no regression (or the suite's data is absent: skipped, said so);
    1 a figure regressed (named); 2 bad input.
    """
    config = load_config(out=out, bench__update_baseline=update_baseline or None)
    from jianmu.engine.bench import BenchSkipped, bench
    from jianmu.report.console import TrainProgress

    try:
        with TrainProgress(console) as progress:
            result = bench(config, suite, reporter=progress)
    except BenchSkipped as skipped:
        console.print(f"[yellow]{skipped}[/]", highlight=False)
        return
    typer.echo((result.out / "bench.md").read_text(encoding="utf-8"))  # unwrapped, for CI logs
    console.print(f"bench.json and bench.md in {result.out} ({result.seconds:.0f} s)")
    if update_baseline:
        console.print("baseline rewritten")
    elif not result.comparison.ok:
        error_console.print(
            f"[bold red]regression:[/] {result.comparison.summary()}", highlight=False
        )
        raise typer.Exit(EXIT_FINDINGS)


# --- serve ----------------------------------------------------------------------------------------


@app.command("serve")
def serve_command(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL...",
            help="bundles to serve: NAME=PATH, or PATH (named by its file stem: wood.onnx -> wood)",
        ),
    ],
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on (default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8000)")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="bearer token every endpoint but /healthz requires"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="server processes (default 1)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="serve beyond loopback without a token")
    ] = False,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="TLS certificate (uvicorn)")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="TLS private key (uvicorn)")
    ] = None,
    top_k: TopKOption = None,
    tta: TtaOption = None,
    no_quality_gate: NoGateOption = False,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Serve models over HTTP for the capture terminals, with an upload page at /.

    POST /v1/NAME/identify (the photos of one specimen, multipart field 'photos'; optional
    'declared'), GET /v1/models, /healthz, /metrics (Prometheus), /docs. Runs until Ctrl-C.
    Exit codes: 0 stopped; 2 user error (bad model, token file, or a host beyond loopback without
    --token-file or --insecure).
    """
    config = load_config(
        config_path, overrides or [], serve__host=host, serve__port=port,
        serve__token_file=token_file, serve__workers=workers, serve__insecure=insecure or None,
        serve__ssl_certfile=ssl_certfile, serve__ssl_keyfile=ssl_keyfile, predict__top_k=top_k,
        predict__tta=tta, quality__gate=False if no_quality_gate else None,
    )  # fmt: skip
    try:
        from jianmu.engine.serve import serve
    except ImportError as error:
        raise JianmuError(f"jianmu serve needs: pip install 'jianmu[serve]' ({error})") from None

    def announce(kind: str, line: str) -> None:
        if kind == "warning":
            error_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
        else:
            console.print(line, highlight=False)

    serve(config, models, announce)
