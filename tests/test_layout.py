"""The package layout's rules: data flows one way (materialize -> interest_models ->
interest_shift) and every package says what belongs in it."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["materialize", "interest_models", "interest_shift"]  # lowest first


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_no_package_imports_a_higher_layer(package):
    higher = LAYERS[LAYERS.index(package) + 1:]
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / package).rglob("*.py")
        for module in _imported_modules(path)
        if module.split(".")[0] in higher
    }
    assert not offending, f"{package} imports a higher layer: {sorted(offending)}"


def test_every_package_has_a_docstring_saying_what_belongs_there():
    packages = [p.parent for layer in LAYERS for p in (ROOT / layer).rglob("__init__.py")]
    assert len(packages) >= 15
    for directory in packages:
        name = ".".join(directory.relative_to(ROOT).parts)
        doc = importlib.import_module(name).__doc__
        assert doc and len(doc.split()) >= 12, f"{name} has no docstring saying what belongs there"


def test_interest_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys; from interest_shift.cli import main; "
            "heavy = sorted({'torch', 'feast', 'pandas', 'xgboost', 'psycopg'} & set(sys.modules)); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
