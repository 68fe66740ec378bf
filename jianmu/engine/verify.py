"""``jianmu verify``: is each specimen what its declaration says?

Every input is classified as by :func:`jianmu.engine.predict.predict` (same rows, files and page),
and each image and specimen answer is set against the declared taxon
(:func:`jianmu.verdict.declaration_decision`): ``consistent``, ``inconsistent`` (with what it
looks like, at the rank the model is sure of) or ``cannot decide`` (refer to lab); with the
regulatory consequence where the answer carries a flag the declaration does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jianmu.bundle import ModelBundle, load_model
from jianmu.config import Config
from jianmu.data.declarations import Declarations, load_declarations
from jianmu.engine.predict import PredictResult, Progress, predict
from jianmu.taxonomy import Lineage, load_taxonomy
from jianmu.verdict import CANNOT_DECIDE, INCONSISTENT, Lineages

# Exit codes of `jianmu verify` beyond predict's (0 all read, 1 unreadable files, 2 user error).
EXIT_CANNOT_DECIDE = 3
EXIT_INCONSISTENT = 4


def verify(
    config: Config,
    model: str | Path | ModelBundle,
    inputs: Sequence[str | Path],
    progress: Progress | None = None,
    keep_images: bool = True,
) -> PredictResult:
    """Classify ``inputs`` and judge each specimen against ``verify.declared`` (one name for all)
    or ``verify.declarations`` (a CSV); the summary counts the decisions.

    Raises:
        JianmuError: no declaration, or a declared name that matches nothing or several species
            (before any photo is read); and what :func:`~jianmu.engine.predict.predict` raises.
    """
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    declarations = model_declarations(bundle, config.verify.declared, config.verify.declarations)
    return predict(config, bundle, inputs, progress, keep_images, declarations)


def model_declarations(
    bundle: ModelBundle, declared: str | None, path: str | Path | None
) -> Declarations:
    """``declared`` (one name for all) or the CSV ``path``, every name matched in the taxonomy of
    the model's domain and against its classes (see :func:`load_declarations`)."""
    domain = (bundle.meta.get("taxonomy") or {}).get("domain")
    lineages = Lineages(bundle.classes, (bundle.meta.get("hierarchy") or {}).get("lineage"))
    classes = {name: Lineage(**found) for name, found in lineages.of_class.items()}
    return load_declarations(declared, path, load_taxonomy(domain) if domain else None, classes)


def exit_code(result: PredictResult) -> int:
    """4 when a declaration is inconsistent, else 3 when one cannot be decided, else 1 when a file
    could not be read, else 0."""
    decisions = result.summary.get("decisions") or {}
    if decisions.get(INCONSISTENT):
        return EXIT_INCONSISTENT
    if decisions.get(CANNOT_DECIDE):
        return EXIT_CANNOT_DECIDE
    return 1 if result.failed else 0
