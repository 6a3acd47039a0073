"""Imports point one way: the engine side never reaches a concrete driver or Qt, twins and
drivers share code only through labpnn, and a twin loads no transport library it does not use."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(folder: str) -> dict[str, set[str]]:
    """{file: modules it imports} for every Python file under ROOT/folder."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("folder, forbidden", [
    ("labpnn", ("labpnn.drivers", "labpnn.sim_devices", "labpnn.gui", "PySide6", "pyqtgraph")),
    ("sim_devices", ("labpnn.drivers", "labpnn.gui", "pyvisa", "PySide6")),
    ("drivers", ("labpnn.sim_devices", "labpnn.gui")),
    ("gui", ("labpnn.drivers", "labpnn.sim_devices", "labpnn.cli")),
])
def test_no_module_imports_against_the_direction(folder, forbidden):
    wrong = {f"{file}: {name}" for file, names in imported_modules(folder).items()
             for name in names if name.startswith(forbidden)}
    if folder == "labpnn":  # the command line and the lightonml shim choose concrete instruments
        wrong = {w for w in wrong if not w.startswith(("labpnn/cli.py", "labpnn/lightonml/"))}
    assert not wrong


def test_importing_the_twins_loads_neither_pyvisa_nor_qt():
    code = ("import sys, labpnn.sim_devices.crossbar, labpnn.sim_devices.optics, labpnn.sim_devices.opu, "
            "labpnn.sim_devices.scpi_server, labpnn.sim_devices.opu_server, labpnn.engine; "
            "print(sorted(m for m in ('pyvisa', 'serial', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
