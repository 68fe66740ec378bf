"""jianmu: image classifiers for border inspection (wood, weed seeds, insect pests).

The public API, imported on first use so that ``import jianmu`` (and ``jianmu --help``) stays light
and an ONNX bundle never pulls in torch::

    import jianmu
    config = jianmu.load_config("configs/wood.yaml", ["train.epochs=5"], data__root="ROOT")
    run = jianmu.train(config).run_dir
    jianmu.evaluate(run, "ROOT", "eval/")
    bundle = jianmu.export(run, "onnx").path
    jianmu.predict(bundle, ["photos/"], out="results.csv")
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
    "predict": "jianmu.engine.predict",
    "bench": "jianmu.engine.bench",
    "JianmuError": "jianmu.errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'jianmu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
