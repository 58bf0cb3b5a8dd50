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


def test_device_names_no_backend_but_the_default() -> None:
    """The simulator is found through its entry point: device/ never names it (its
    flag, its defaults, its sosctl controls and its [sim] section come from
    sim/backend.py's declaration)."""
    import re

    naming = [
        str(f.relative_to(REPO))
        for f in sorted((REPO / "device").rglob("*.py"))
        if re.search(r"""["'](sim|--sim)["']|SIM_DEFAULTS|sim_data_dir""", f.read_text())
    ]
    assert naming == []


def test_backends_declare_their_section_defaults_and_controls() -> None:
    from device import config as config_mod
    from device.parts import backends
    from device.tomlconf import ConfigError

    found = backends()
    assert {"hw", "sim"} <= set(found)
    sim = found["sim"]
    assert sim.defaults is not None and "device.data_dir" in sim.defaults()
    assert [c.name for c in sim.controls] == ["press", "battery", "gps"]
    assert found["hw"].defaults is None  # real hardware needs a configuration file
    base = 'device.id = "b1"\n[[sos.contacts]]\nname = "A"\n'
    cfg = config_mod.load(text=base + "[sim]\nwalk_speed = 3.0\n")
    assert cfg.sections["sim"].walk_speed == 3.0 and cfg.sections["sim"].battery_pct == 85.0
    try:
        config_mod.load(text=base + '[sim]\nwalk_speed = "fast"\nwings = 2\n')
    except ConfigError as exc:
        text = str(exc)
        assert "sim.walk_speed" in text and "sim.wings: unknown key" in text
    else:
        raise AssertionError("a bad [sim] section was accepted")
