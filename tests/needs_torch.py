"""A pytest plugin that marks the tests needing torch, so that an environment without it (the client and
the service on Python 3.13, in .ci/run) runs all the others: `python -m pytest -p tests.needs_torch -m
"not torch"`.

A test needs torch when it uses the tiny generator (the `tiny_run` / `tiny_store` fixtures train it with
torch), imports torch or the training side in its body, or takes a parameter naming one of their modules
(a subprocess that imports it). A test module that imports them at its top cannot even be collected
without torch: where torch is missing, it is left out whole.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

import pytest

TORCH_FIXTURES = {"tiny_run", "tiny_store"}
TORCH_PACKAGES = {"torch", "training", "monai"}


def _imported(nodes: list[ast.stmt]) -> set[str]:
    """The top-level package names that these statements import, at any depth."""
    names = set()
    for node in (n for statement in nodes for n in ast.walk(statement)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@cache
def _tree(filename: str) -> ast.Module:
    return ast.parse(Path(filename).read_text(), filename)


def _top_level_imports(path: Path) -> set[str]:
    body = _tree(str(path)).body
    return _imported([n for n in body if isinstance(n, ast.Import | ast.ImportFrom | ast.Try)])


def _function_body(function) -> list[ast.stmt]:
    """The statements of a test function, found by its name and first line (its first decorator's)."""
    code = function.__code__
    for node in ast.walk(_tree(code.co_filename)):
        if isinstance(node, ast.FunctionDef) and node.name == function.__name__:
            if min([node.lineno, *(d.lineno for d in node.decorator_list)]) == code.co_firstlineno:
                return node.body
    return []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if importlib.util.find_spec("torch") is not None:
        return None
    return True if _top_level_imports(collection_path) & TORCH_PACKAGES else None


def _needs_torch(item: pytest.Item) -> bool:
    if TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    if item.path.suffix == ".py" and _top_level_imports(item.path) & TORCH_PACKAGES:
        return True  # the same selection where torch is installed as where it is not
    function = getattr(item, "function", None)
    if function is not None and _imported(_function_body(function)) & TORCH_PACKAGES:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(v, str) and v.split(".")[0] in TORCH_PACKAGES for v in params.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_torch(item):
            item.add_marker(pytest.mark.torch)
