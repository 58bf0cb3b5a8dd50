"""A short point of the cost curve (``make scale`` measures the whole curve; see
docs/scaling.md): ``sos-sim fleet`` with 50 devices through one relay on SQLite, a tenth
of them in SOS, each contact watching the live page. Beside it, from the same run: the
same fleet with a single SOS (the relay's cost of merely serving the fleet), and the raw
MQTT publish → receive round trip on the same broker.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench.uplink import _ms, raw_round_trips
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.fleet import FleetSpec, Summary, run_fleet


async def _fleet(workdir: Path, spec: FleetSpec) -> Summary:
    return await run_fleet(spec, workdir=workdir, out=lambda _line: None)


def _pair(d: dict[str, float]) -> str:
    return f"{d['p50']:.0f} / {d['p99']:.0f}"


def run(*, devices: int = 50, seconds: float = 40.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sos-bench-fleet-") as tmp:
        base = Path(tmp)
        with Mosquitto(base / "raw", config="max_queued_messages 0\n") as broker:
            raw = asyncio.run(raw_round_trips(broker.port, 200))
        (base / "idle").mkdir()
        idle = asyncio.run(
            _fleet(base / "idle", FleetSpec(devices=devices, sos_per_minute=0, duration=20))
        )
        (base / "load").mkdir()
        spec = FleetSpec(
            devices=devices, sos_per_minute=devices / 10, sos_seconds=60, duration=seconds
        )
        load = asyncio.run(_fleet(base / "load", spec))
    return {
        "devices, SOSes, fixes stored, records lost": (
            devices, load.sos_started, load.fixes_stored, load.records_lost
        ),
        "relay CPU, % of a core: one SOS (baseline) / a tenth in SOS": (
            round(idle.relay_cpu_s * 100 / idle.seconds, 1),
            round(load.relay_cpu_s * 100 / load.seconds, 1),
        ),
        "relay CPU per 1,000 fixes stored, ms": round(load.relay_cpu_ms_per_1000_fixes),
        "raw MQTT publish → receive p50 / p99, ms (baseline)": (_ms(raw, 0.5), _ms(raw, 0.99)),
        "gesture → stored at the relay p50 / p99, ms": _pair(load.gesture_to_stored_ms),
        "gesture → the contact's page p50 / p99, ms": _pair(load.gesture_to_page_ms),
        "route point → on the page p50 / p99, ms": _pair(load.fix_to_page_ms),
        "simulator CPU per device, % of a core": round(
            load.fleet_cpu_s * 100 / (load.seconds * devices), 2
        ),
    }  # fmt: skip
