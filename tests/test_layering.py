"""The house rules, checked: device/ never imports hw/, sim/ or relay/; the relay uses
only the device's wire contract and its two plain libraries (the MQTT connection and the
TOML loader), never hw/ or sim/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO


def raw_imports(path: Path) -> set[str]:
    """The modules ``path`` imports, as written."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports, ours named by their folder (``sosbeacon.device.x``
    as ``device.x``)."""
    return {m.removeprefix("sosbeacon.") for m in raw_imports(path)}


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
#: loader, the error base and the file modes of what is kept at rest. Nothing of the daemon.
RELAY_MAY_USE = {
    "device.wire", "device.records", "device.clock", "device.mqtt", "device.tomlconf",
    "device.errors", "device.brokerconf", "device.private",
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
    from sosbeacon.device import config as config_mod
    from sosbeacon.device.parts import backends
    from sosbeacon.device.tomlconf import ConfigError

    found = backends()
    assert {"hw", "sim"} <= set(found)
    sim = found["sim"]
    assert sim.defaults is not None and "device.data_dir" in sim.defaults()
    assert [c.name for c in sim.controls][:4] == ["press", "battery", "gps", "network"]
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


OURS = ("device", "hw", "sim", "relay")


def test_our_code_is_imported_under_one_name_only() -> None:
    """``sosbeacon.device.x``, never ``device.x``: the source tree can import both (the
    folders sit at its top), and a module imported under two names is two modules (two
    Outbox classes, two event buses). An installed wheel has only ``sosbeacon``."""
    files = [f for d in (*OURS, "tests", "bench") for f in sorted((REPO / d).rglob("*.py"))]
    bare = {
        str(f.relative_to(REPO)): sorted(m for m in raw_imports(f) if m.split(".")[0] in OURS)
        for f in files
    }
    assert {k: v for k, v in bare.items() if v} == {}
    # ... nor in code run from a string (``python -c "from ... import sosd_main"``)
    spoken = re.compile(r"\b(?:from|import) (?:device|hw|sim|relay)[. ]")
    in_strings = sorted(
        str(f.relative_to(REPO))
        for f in files
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and spoken.search(node.value)
    )
    assert in_strings == []
    for d in OURS:  # the links the package is made of
        link = REPO / "sosbeacon" / d
        assert link.is_symlink() and link.resolve() == (REPO / d).resolve()


def test_the_installed_distribution_claims_only_sosbeacon() -> None:
    """What the wheel packages: setuptools' own search, as pyproject.toml configures it."""
    import tomllib

    from setuptools import find_packages

    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = conf["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_packages(str(REPO), include=include)
    assert {p.split(".")[0] for p in found} == {"sosbeacon"}
    assert {f"sosbeacon.{d}" for d in OURS} <= set(found)
    assert "sosbeacon.device.outbox" in found and "sosbeacon.hw.nmea" in found
    scripts = conf["project"]["scripts"].values()
    backends = conf["project"]["entry-points"]["sosbeacon.backends"].values()
    assert all(target.startswith("sosbeacon.") for target in (*scripts, *backends))


def test_nothing_of_ours_is_loaded_under_its_folder_name() -> None:
    """Every module of the package imported in a fresh interpreter (as sosd, the relay
    and the simulator would): none drags in a ``device``, ``hw``, ``sim`` or ``relay``
    module beside its ``sosbeacon.`` twin (a resource looked up by folder name, say)."""
    import subprocess
    import sys

    probe = (
        "import importlib, pkgutil, sys, sosbeacon\n"
        "for m in pkgutil.walk_packages(sosbeacon.__path__, 'sosbeacon.'):\n"
        "    importlib.import_module(m.name)\n"
        "from sosbeacon.sim.gps.route import Route\n"
        "Route.sample()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OURS!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sosd_run_loads_only_the_drivers_its_configuration_names(tmp_path: Path) -> None:
    """``sosd run`` with a serial GPS, a sysfs battery, no button and no modem builds its
    parts without loading the modem drivers (dbus-fast for ModemManager), the gpsd
    client, the export's GPX writer, the simulator or the tests: every module stays
    resident on a 512 MB board. (The simulator's declaration, ``sim.backend``, is read
    for its configuration section: it imports nothing of the simulator.)"""
    import subprocess
    import sys

    conf = tmp_path / "sosbeacon.toml"
    conf.write_text(
        f'[device]\nid = "b1"\ndata_dir = "{tmp_path / "data"}"\n'
        '[gps]\ndevice = "/dev/null"\n[button]\nenabled = false\n'
        '[network]\nmonitor = false\n[modem]\nbackend = "none"\n'
    )
    probe = (
        "import asyncio, contextlib, sys\n"
        "from sosbeacon.device import cli, config\n"
        "from sosbeacon.device.clock import MonotonicClock\n"
        "from sosbeacon.device.parts import load_backend\n"
        f"cfg = config.load({str(conf)!r})\n"
        "async def build():\n"
        "    async with contextlib.AsyncExitStack() as stack:\n"
        "        return await load_backend('hw')(cfg, MonotonicClock(), stack)\n"
        "parts = asyncio.run(build())\n"
        "print(type(parts.gps).__name__)\n"
        "declared = {'sosbeacon.sim', 'sosbeacon.sim.backend'}\n"
        "print(sorted(m for m in set(sys.modules) - declared if m.startswith(('sosbeacon.sim',"
        " 'tests', 'gpxpy', 'dbus_fast', 'sosbeacon.hw.modem', 'sosbeacon.hw.gpsd_client',"
        " 'importlib.metadata'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["NmeaSerialSource", "[]"], out.stdout
