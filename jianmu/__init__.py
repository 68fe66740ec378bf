"""jianmu: image classifiers for border inspection (wood, weed seeds, insect pests).

The public API, imported on first use so that ``import jianmu`` (and ``jianmu --help``) stays light
and an ONNX bundle never pulls in torch. Every entry point takes a :class:`~jianmu.config.Config`
and what it acts on, and returns a result object; ``jianmu X`` on the command line builds the same
config from its options and makes the same call::

    import jianmu
    config = jianmu.load_config("configs/wood.yaml", ["train.epochs=5"], data__root="ROOT")
    run = jianmu.train(config).run_dir
    jianmu.evaluate(config.updated(out="eval/"), run)
    bundle = jianmu.export(config, run).path    # out unset: beside the checkpoint
    jianmu.predict(config.updated(["predict.top_k=5"], out="results.csv"), bundle, ["photos/"])
    model = jianmu.load_model(bundle)          # predict_proba / predict on preprocessed batches
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "jianmu.config",
    "load_model": "jianmu.bundle",
    "train": "jianmu.engine.train",
    "evaluate": "jianmu.engine.evaluate",
    "export": "jianmu.engine.export",
    "add_species": "jianmu.engine.add_species",
    "predict": "jianmu.engine.predict",
    "verify": "jianmu.engine.verify",
    "review": "jianmu.engine.review",
    "import_reviewed": "jianmu.data.importer",
    "bench": "jianmu.engine.bench",
    "compare": "jianmu.engine.compare",
    "cross_validate": "jianmu.engine.crossval",
    "leave_species_out": "jianmu.engine.leave_species_out",
    "serve": "jianmu.engine.serve",
    "JianmuError": "jianmu.errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'jianmu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
