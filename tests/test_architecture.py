"""The house import graph: arrows run cli -> engine -> {data, models, ...} -> config."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jianmu"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _modules():
    return {p: _imports(p) for p in PACKAGE.rglob("*.py")}


def test_nothing_imports_cli():
    for path, imports in _modules().items():
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "jianmu.cli" not in imports, path


def test_config_imports_no_torch_and_no_other_jianmu_module():
    imports = _imports(PACKAGE / "config.py")
    jianmu_imports = {name for name in imports if name.startswith("jianmu")}
    assert jianmu_imports <= {"jianmu.errors"}
    assert not any(name.split(".")[0] in ("torch", "timm", "torchvision") for name in imports)


def test_albumentations_is_imported_in_one_module():
    importers = [
        path.relative_to(PACKAGE).as_posix()
        for path, imports in _modules().items()
        if any(name.split(".")[0] == "albumentations" for name in imports)
    ]
    assert importers == ["data/transforms.py"]


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from jianmu.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_onnx_inference_path_imports_no_heavy_library_at_module_level():
    """An inspector's laptop runs an ONNX bundle with numpy, OpenCV and onnxruntime only."""
    light = ["bundle.py", "scoring.py", "data/preprocess.py", "data/stream.py", "engine/runner.py"]
    heavy = ("torch", "timm", "torchvision", "albumentations", "sklearn", "scipy", "matplotlib")
    code = (
        "import sys, importlib\n"
        "for name in ('jianmu.bundle', 'jianmu.scoring', 'jianmu.data.preprocess',\n"
        "             'jianmu.data.stream', 'jianmu.engine.runner'):\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", light


def test_public_api_resolves_lazily_without_torch():
    code = (
        "import sys, jianmu\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(jianmu.load_model) and 'torch' not in sys.modules\n"
        "names = ['load_config', 'train', 'evaluate', 'export', 'predict', 'bench']\n"
        "print(all(callable(getattr(jianmu, name)) for name in names))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
