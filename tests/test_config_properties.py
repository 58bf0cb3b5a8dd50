"""``check-config`` accepting a configuration means ``run`` starts with it and an SOS can
be started and stopped; refusing one names the key at fault.

Configurations are generated from the schema itself (the settings dataclasses): a few
keys of a valid one get random values of every sort, within and far outside their
ranges: inf, nan, huge, negative, empty, another type, a table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import tempfile
import typing
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sosbeacon.device import config as config_mod
from sosbeacon.device.config import Config
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.parts import load_backend
from sosbeacon.device.tomlconf import ConfigError

#: keys left alone: where the test keeps its data, and the closed port it "connects" to
FIXED = {"device.data_dir", "mqtt.broker", "device.id"}


def leaves(cls: type, where: str = "") -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if (
            not f.init
            or f.name == "source"
            or (cls is config_mod.UplinkConfig and f.name == "device_id")
        ):
            continue
        key = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += leaves(tp, key)
        elif key not in FIXED and key != "sos.contacts":
            out.append((key, tp))
    return out


KEYS = leaves(Config)


WILD = st.sampled_from(
    [math.inf, -math.inf, math.nan, 0, -1, 1e300, 2**70, "", "x" * 300, True, [], {}, "nan"]
)


def value_for(key: str, tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    base: st.SearchStrategy[Any]
    if tp is bool:
        base = st.booleans()
    elif tp in (int, float) or (origin is not None and int in typing.get_args(tp)):
        lo, hi = config_mod.range_of(key)
        if tp is int or (origin is not None and float not in typing.get_args(tp)):
            base = st.integers(math.ceil(lo), int(hi))
        else:
            base = st.floats(lo, hi, allow_nan=False)
    elif isinstance(tp, type) and issubclass(tp, config_mod.enum.Enum):
        base = st.sampled_from([m.value for m in tp])
    else:
        base = st.text(max_size=20)
    return st.one_of(base, base, base, WILD)


@st.composite
def perturbed(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=5, unique_by=lambda k: k[0]))
    return {key: draw(value_for(key, tp)) for key, tp in chosen}


BASE = """
[device]
id = "p1"
[[sos.contacts]]
name = "Alice"
[mqtt]
broker = "mqtt://127.0.0.1:1"
"""


async def run_and_sos(cfg: Config) -> None:
    daemon = Daemon(cfg, load_backend("sim"), handle_signals=False)
    task = asyncio.create_task(daemon.run())
    try:
        ready = asyncio.ensure_future(daemon.ready.wait())
        await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), f"run ended at start: {task.exception()!r}"
        assert ready.done(), "run did not get ready"
        start = await daemon.handle({"cmd": "sos-start", "now": True})
        assert start["ok"], start
        stop = await daemon.handle({"cmd": "sos-stop"})
        assert stop["ok"] and stop["state"] == "idle", stop
        assert (await daemon.handle({"cmd": "status"}))["ok"]
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(perturbed())
def test_accepted_means_it_runs_and_refused_names_the_key(changes: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**changes, "device.data_dir": str(Path(tmp) / "data")}
        try:
            cfg = config_mod.load(text=BASE, overrides=overrides)
        except ConfigError as exc:
            problems = exc.problems
        else:
            event("accepted: run, sos start and stop")
            asyncio.run(run_and_sos(cfg))
            return
    event("refused")
    # every problem starts with the key(s) it is about ...
    assert all(p.split(":")[0] and p[0] != " " for p in problems), problems
    # ... and one of them is about a key that was changed (or the section holding it)
    assert any(k in p or p.split(":")[0] in k for p in problems for k in changes), (
        changes,
        problems,
    )
