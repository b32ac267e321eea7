"""The import boundaries of the design card, checked two ways: statically over every source file, and
by importing each package in a fresh interpreter and looking at what got loaded."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = {
    "training": REPO / "training",
    "service": REPO / "service",
    "thoraxclient": REPO / "clients" / "thoraxclient",
}
FORBIDDEN = {
    "training": {"service"},  # it may use the wire schemas of thoraxclient (the model card)
    "service": {"torch", "training", "safetensors"},
    "thoraxclient": {"torch", "training", "service", "onnxruntime", "minio"},
}


def imported_top_level_names(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_forbidden_imports_in_source(package: str) -> None:
    imported = imported_top_level_names(PACKAGES[package])
    offenders = {name: sorted(files) for name, files in imported.items() if name in FORBIDDEN[package]}
    assert offenders == {}, f"{package} imports what it must not: {offenders}"


@pytest.mark.parametrize(
    "package, only_file",
    [
        ("minio", "service/storage/s3.py"),
        ("onnxruntime", "service/backends/onnx.py"),
        ("openvino", "service/backends/openvino.py"),
    ],
)
def test_one_place_in_the_service_imports_each_heavy_client(package: str, only_file: str) -> None:
    assert imported_top_level_names(PACKAGES["service"]).get(package) == {only_file}


@pytest.mark.parametrize(
    "module, must_not_load",
    [
        ("service", ["torch", "training"]),
        ("service.app", ["torch", "training", "safetensors"]),
        ("thoraxclient", ["torch", "training", "service"]),
        ("thorax.cli", ["torch", "training", "service"]),
        ("training.data", ["service"]),
    ],
)
def test_importing_loads_nothing_forbidden(module: str, must_not_load: list[str]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {must_not_load!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"
