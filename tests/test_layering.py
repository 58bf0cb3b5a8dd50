"""The house rule, checked: device/ never imports hw/ or sim/."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_device_imports_neither_hw_nor_sim() -> None:
    files = sorted((REPO / "device").rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(f.relative_to(REPO)): sorted(
            m for m in imported_modules(f) if m.split(".")[0] in ("hw", "sim")
        )
        for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_hw_does_not_import_sim() -> None:
    offenders = {
        str(f.relative_to(REPO)): sorted(m for m in imported_modules(f) if m.split(".")[0] == "sim")
        for f in sorted((REPO / "hw").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
