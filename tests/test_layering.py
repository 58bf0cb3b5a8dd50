"""The house rules, checked: device/ never imports hw/, sim/ or relay/; the relay uses
only the device's wire contract and its two plain libraries (the MQTT connection and the
TOML loader), never hw/ or sim/."""

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


def test_device_imports_neither_hw_nor_sim_nor_relay() -> None:
    files = sorted((REPO / "device").rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(f.relative_to(REPO)): sorted(
            m for m in imported_modules(f) if m.split(".")[0] in ("hw", "sim", "relay")
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


#: what the relay may take from device/: the wire contract (and the record kinds it is
#: written in, with their clock), the MQTT v5 connection and its [mqtt] settings, the TOML
#: loader and the error base. Nothing of the daemon.
RELAY_MAY_USE = {
    "device.wire", "device.records", "device.clock", "device.mqtt", "device.tomlconf",
    "device.errors", "device.brokerconf",
}  # fmt: skip


def test_the_relay_uses_only_the_wire_contract_and_plain_libraries_of_device() -> None:
    files = sorted((REPO / "relay").rglob("*.py"))
    assert len(files) > 5
    offenders = {}
    for f in files:
        bad = sorted(
            m
            for m in imported_modules(f)
            if m.split(".")[0] in ("hw", "sim")
            or (m.split(".")[0] == "device" and m not in RELAY_MAY_USE)
            or m == "device"
        )
        if bad:
            offenders[str(f.relative_to(REPO))] = bad
    assert offenders == {}
    # and those modules are themselves free of the daemon
    for name in RELAY_MAY_USE:
        path = REPO / (name.replace(".", "/") + ".py")
        inner = {m for m in imported_modules(path) if m.split(".")[0] == "device"}
        assert inner <= RELAY_MAY_USE, (name, inner - RELAY_MAY_USE)
