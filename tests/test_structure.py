"""The house rules of the source tree (docs/design.md, "Layout"): short functions, one-way imports,
registries and their Literal types in step, documented key names that are the code's constants."""

from __future__ import annotations

import ast
import re
import typing
from importlib import resources
from pathlib import Path

import pytest

import stpredict

SRC = Path(stpredict.__file__).parent
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of a function without its docstring, blank lines and comment lines."""
    body = node.body  # type: ignore[attr-defined]
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        if len(body) == 1:
            return 0
        first = body[1]
    text = lines[first.lineno - 1 : node.end_lineno]  # type: ignore[attr-defined]
    return sum(1 for line in text if line.strip() and not line.strip().startswith("#"))


def test_no_function_is_longer_than_100_lines():
    long = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _code_lines(node, lines)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``TYPE_CHECKING`` blocks left out)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
            continue
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
        for alias in node.names:
            full = f"{target}.{alias.name}"
            found.add(full if full in modules else target)
    return {m for m in found if m in modules and m != name}


def test_no_two_modules_import_each_other():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    pairs = sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if a < b and a in graph.get(b, ()) and not (b.startswith(a + ".") or a.startswith(b + "."))
    )
    assert not pairs, pairs  # a package and its own submodules excepted (re-exports)


def test_literal_types_name_the_registries():
    from stpredict import _constants
    from stpredict.models import METHODS, PRESETS
    from stpredict.tl._runners import BASELINES

    assert set(typing.get_args(_constants.Method)) == set(METHODS)
    assert set(typing.get_args(_constants.PresetName)) == {"auto"} | {p for v in PRESETS.values() for p in v}
    assert set(typing.get_args(_constants.Baseline)) == set(BASELINES)
    assert {cls.name for cls in METHODS.values()} == set(METHODS)  # the registry is built from the classes


def test_cli_choices_come_from_the_registries():
    from stpredict.cli import _parser
    from stpredict.datasets import DEMO_DATASETS
    from stpredict.models import METHODS

    demo = _parser()._subparsers._group_actions[0].choices["demo"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in demo._actions if a.choices}
    assert list(choices["method"]) == list(METHODS)
    assert list(choices["dataset"]) == list(DEMO_DATASETS)


def test_py_typed_ships():
    assert resources.files("stpredict").joinpath("py.typed").is_file()


@pytest.fixture(scope="module")
def design() -> str:
    return (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()


def test_design_page_key_names_are_the_constants(design):
    from stpredict import _constants as c

    contract = design[design.index("### The results contract") :]
    contract = contract[: contract.index("\n### ")]
    names = set(re.findall(r"`([A-Za-z_]+)(?:\(key\))?`", contract)) & set(dir(c)) | set(
        re.findall(r"`([A-Z][A-Z_]+)`", contract)
    )
    assert {"DEFAULT_KEY", "WRITTEN_BY", "TRUTH_LAYER", "truth_key", "std_key", "ood_key"} <= names
    assert all(hasattr(c, n) for n in names), sorted(n for n in names if not hasattr(c, n))
    for name in ("DEFAULT_KEY", "WRITTEN_BY", "TRUTH_LAYER"):
        assert f'`{name}` = `"{getattr(c, name)}"`' in contract, name
    for func, suffix in ((c.truth_key, "_truth"), (c.std_key, "_std"), (c.ood_key, "_ood")):
        assert func("k") == "k" + suffix
        assert f'key + "{suffix}"' in design
    assert f'layers["{c.TRUTH_LAYER}"]' in design


def _resolves(dotted: str) -> bool:
    import importlib

    try:
        importlib.import_module(dotted)
        return True
    except ImportError:
        parent, _, attr = dotted.rpartition(".")
        try:
            return hasattr(importlib.import_module(parent), attr)
        except ImportError:
            return False


def test_design_page_names_what_exists(design):
    packages = "models|tl|data|baselines|io|pp|pl|datasets|retrieval|train|get|metrics"
    pattern = rf"`(?:stpredict\.)?((?:{packages})(?:[./][A-Za-z_]+)+)(?:\.py)?(?:\(|`)"
    named = set(re.findall(pattern, design))
    assert len(named) > 20
    dotted = {"stpredict." + ref.removesuffix(".py").replace("/", ".") for ref in named}
    bad = sorted(ref for ref in dotted if not _resolves(ref))
    assert not bad, bad
