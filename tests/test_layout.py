"""The house rules that keep the code readable (issue 12): small functions, and model code
that knows nothing of training, serving, reporting or the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tica"
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_function_in_the_library_is_over_sixty_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def _imports(source: str, package: tuple[str, ...]) -> set[str]:
    """The tica modules a module of subpackage `package` imports, as dotted names relative
    to tica. `from PACKAGE import NAME` with no module after the dots (or `from tica import
    NAME`) imports NAME, which may be a subpackage such as train/: it counts as PACKAGE.NAME."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level and node.module is None:
            base = package[: len(package) - (node.level - 1)]
            found.update(".".join(base + (a.name,)) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            found.add(".".join(base + tuple(filter(None, [node.module]))))
        elif isinstance(node, ast.ImportFrom) and node.module == "tica":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tica."):
            found.add(node.module.removeprefix("tica."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("tica").lstrip(".") for a in node.names
                         if a.name == "tica" or a.name.startswith("tica."))
    return found


@pytest.mark.parametrize("layer", ["models", "nn", "entropy"])
def test_model_code_knows_nothing_of_training_serving_reporting_or_the_cli(layer):
    outside = ("train", "serve", "cli", "evaluate", "api")
    for path in sorted((SRC / layer).rglob("*.py")):
        package = path.relative_to(SRC).parent.parts
        bad = {m for m in _imports(path.read_text(), package) if m.split(".")[0] in outside}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_the_import_rule_sees_every_form_of_import():
    source = "from ..train import x\nfrom . import cost\nimport tica.serve.app\nfrom tica.cli import main\n"
    assert _imports(source, ("models",)) == {"train", "models.cost", "serve.app", "cli"}
    # train/ is a package: its modules, and the package named without a module, count as train
    for source in ("from ..train.loop import x", "from .. import train", "from tica import train",
                   "import tica.train.state", "from tica.train.objective import Objective"):
        assert {m.split(".")[0] for m in _imports(source, ("models",))} == {"train"}, source


# The library's layers, bottom up: a module may import its own layer's modules (without a
# circle) and any layer below, never one above. Subpackages count as one module.
LAYERS = [
    {"errors", "weights"},
    {"config", "io", "extras"},
    {"nn", "entropy", "bitstream", "losses"},
    {"checkpoint", "cost"},
    {"models"},
    {"registry"},
    {"image", "output", "data", "api"},
    {"evaluate", "export", "train", "serve"},
    {"cli", "__init__"},
]


def _module_graph() -> dict[str, set[str]]:
    """tica's top-level modules and subpackages -> the ones they import (any import, at
    module level or inside a function)."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        rel = path.relative_to(SRC)
        name = rel.parts[0].removesuffix(".py")
        package = rel.parent.parts
        deps = {m.split(".")[0] for m in _imports(path.read_text(), package) if m}
        graph.setdefault(name, set()).update(deps - {name})
    return graph


def test_every_module_has_a_layer_and_imports_only_downwards():
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    graph = _module_graph()
    assert set(graph) - set(level) == set(), "give these a layer in LAYERS"
    upward = sorted(f"{m} ({level[m]}) imports {d} ({level[d]})" for m, deps in graph.items()
                    for d in deps if d in level and level[d] > level[m])
    assert upward == []


def test_the_modules_import_each_other_without_a_circle():
    graph = _module_graph()
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, "import circle: " + " -> ".join(path + (node,))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + (node,))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


def test_the_library_holds_only_the_library():
    """The repository's tools (plans, the report, baselines: tools/tica_tools) stay out of the
    installed package: no module of src/tica imports them, and none is left behind there."""
    tools = Path(__file__).resolve().parents[1] / "tools" / "tica_tools"
    moved = {p.stem for p in tools.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    moved.discard("__init__")
    assert {"plan", "report", "classical", "rd", "timing"} <= moved
    assert moved.isdisjoint(_module_graph())
    importers = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.split(".")[0] == "tica_tools" for n in names):
                importers.append(str(path.relative_to(SRC)))
    assert importers == []
