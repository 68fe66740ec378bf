"""The house import graph, read from every import statement of every module (at module level and
inside functions alike: a lazy import that hides a loop is still a loop).

Arrows run one way, top to bottom: cli -> engine -> report -> bundle -> {calibration, models} ->
{data, taxonomy, metrics, verdict, outputs} -> {config, errors, files, rundir}. ARCHITECTURE.md
draws the same layers.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jianmu"
# Bottom first; a module belongs to the layer of its longest listed prefix.
LAYERS = (
    ("jianmu", "jianmu.errors", "jianmu.config", "jianmu.files", "jianmu.rundir", "jianmu.record"),
    (
        "jianmu.outputs",
        "jianmu.taxonomy",
        "jianmu.data",
        "jianmu.metrics",
        "jianmu.verdict",
        "jianmu.gallery",
    ),
    ("jianmu.calibration", "jianmu.models"),
    ("jianmu.bundle",),
    ("jianmu.report",),
    ("jianmu.engine",),
    ("jianmu.cli", "jianmu.__main__"),
)
HEAVY = ("torch", "timm", "torchvision", "albumentations", "sklearn", "scipy", "matplotlib")
# What `jianmu predict model.onnx ...` imports: the command, its engine and everything below.
ONNX_PREDICT_PATH = (
    "jianmu.cli",
    "jianmu.engine.predict",
    "jianmu.report.console",
    "jianmu.report.predict_html",
    "jianmu.bundle",
    "jianmu.calibration.apply",
    "jianmu.engine.verify",
    "jianmu.engine.add_species",  # extending an ONNX bundle needs no torch either
    "jianmu.engine.serve",  # `jianmu serve wood.onnx`: the service of the capture terminals
    "jianmu.engine.serve.app",
    "jianmu.report.upload_page",
)
# The lab's review loop (`jianmu review`, `jianmu data import`) starts as light.
REVIEW_PATH = ("jianmu.engine.review", "jianmu.report.review_page", "jianmu.data.importer")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the jianmu modules it imports, anywhere in its code."""
    modules = {module_name(path): path for path in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                # `from jianmu.engine import export` imports the module jianmu.engine.export
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")
    return max(matches)[1]


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checks_catch_a_circle_and_an_upward_arrow():
    graph = {
        "jianmu.engine.a": {"jianmu.engine.b"},
        "jianmu.engine.b": {"jianmu.engine.a", "jianmu.config"},
        "jianmu.config": {"jianmu.cli"},
        "jianmu.cli": set(),
    }
    assert circles(graph) == [["jianmu.engine.a", "jianmu.engine.b"]]
    assert upward_arrows(graph) == ["jianmu.config -> jianmu.cli"]
    assert not circles({"jianmu.cli": {"jianmu.engine.a"}, "jianmu.engine.a": set()})


def test_every_module_sits_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_arrows_run_one_way_down_the_layers():
    assert upward_arrows(import_graph()) == []


def test_nothing_imports_cli():
    importers = [m for m, targets in import_graph().items() if "jianmu.cli" in targets]
    assert importers == ["jianmu.__main__"]


def test_the_package_root_imports_nothing_of_its_own():
    """``jianmu/__init__.py`` resolves the public API by name on first use."""
    assert import_graph()["jianmu"] == set()


def test_config_imports_no_torch_and_only_the_error_type():
    assert import_graph()["jianmu.config"] == {"jianmu.errors"}
    tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & set(HEAVY)


def test_albumentations_is_imported_in_one_module():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            if any(name.split(".")[0] == "albumentations" for name in names):
                importers.append(path.relative_to(PACKAGE).as_posix())
                break
    assert importers == ["data/transforms.py"]


@pytest.mark.parametrize("module", (*ONNX_PREDICT_PATH, *REVIEW_PATH))
def test_the_onnx_predict_path_imports_no_heavy_library(module):
    """An inspector's laptop runs an ONNX bundle with numpy, OpenCV and onnxruntime only
    (tests/test_predict.py runs the whole command the same way)."""
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


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


def test_public_api_resolves_lazily_without_torch():
    code = (
        "import sys, jianmu\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(jianmu.load_model) and 'torch' not in sys.modules\n"
        "names = ['load_config', 'train', 'evaluate', 'export', 'predict', 'bench',\n"
        "         'cross_validate', 'leave_species_out']\n"
        "print(all(callable(getattr(jianmu, name)) for name in names))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


# Facts with one home: their spelling appears in no other module's code (docstrings aside).
FACTS = {
    "rundir.py": ("best.safetensors", "last.state.pt", "manifest.csv", "test_metrics.json",
                  "metrics.csv", "config.yaml", "summary.json", "crossval.json"),
    "verdict.py": ("unknown - refer to lab",),
}  # fmt: skip
LISTS = {"config.py": (r'"wood",\s*"weed_seed",\s*"insect"', r'"msp",\s*"energy",\s*"mahal')}


def _code_strings(path: Path) -> set[str]:
    """The string constants of a module's code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    }  # fmt: skip


def _spelt_elsewhere(home: str, found) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE).as_posix()}: {fact}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() != home
        for fact in found(path)
    ]


@pytest.mark.parametrize("home", sorted(FACTS))
def test_facts_are_spelt_in_their_home_only(home):
    assert _spelt_elsewhere(home, lambda path: set(FACTS[home]) & _code_strings(path)) == []


@pytest.mark.parametrize("home", sorted(LISTS))
def test_lists_are_written_in_their_home_only(home):
    def found(path: Path) -> list[str]:
        text = path.read_text(encoding="utf-8")
        return [pattern for pattern in LISTS[home] if re.search(pattern, text)]

    assert _spelt_elsewhere(home, found) == []
