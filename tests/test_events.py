"""The daemon's event stream (``sosctl events``): typed events instead of log wording,
replayed since a time across a restart, never blocking the daemon."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device import config as config_mod
from sosbeacon.device.cli import format_event, sosctl
from sosbeacon.device.control import follow, request
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.events import Event, EventKind, Events
from sosbeacon.device.parts import load_backend
from tests.test_daemon import broker_and_contact, config_text


async def test_a_slow_follower_loses_the_oldest_and_is_told_how_many() -> None:
    t = [100.0]
    bus = Events(clock=lambda: t[0], size=3)
    async with bus.follow() as stream:
        for i in range(5):
            t[0] += 1
            bus.emit(EventKind.CUE, cue=f"c{i}")
        it = aiter(stream)
        first = await anext(it)
        assert first == Event(EventKind.MISSED, 103.0, {"count": 2})
        assert [(await anext(it)).data["cue"] for _ in range(3)] == ["c2", "c3", "c4"]
    assert bus.followers == 0
    # what happened since a time is replayed to a new follower
    async with bus.follow(since=103.5) as stream:
        it = aiter(stream)
        assert [(await anext(it)).data["cue"] for _ in range(2)] == ["c3", "c4"]


def test_an_event_reads_as_a_line() -> None:
    ev = {"kind": "link", "t": 1_800_000_000.0, "state": "down", "why": "refused", "lost": True}
    line = format_event(ev)
    assert line.endswith("link          down (why refused, lost True)")


async def test_the_daemon_streams_what_happens_and_forgets_a_follower_that_left(
    tmp_path: Path,
) -> None:
    async with broker_and_contact(tmp_path) as (broker, _rx):
        cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))
        daemon = Daemon(cfg, load_backend("sim"))
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 15)
            sock = cfg.socket_path
            if daemon.sms is not None:
                await asyncio.wait_for(daemon.sms.listening.wait(), 10)
            own = daemon.events.followers  # the daemon's own (the SMS alerts follow too)
            seen: list[dict[str, Any]] = []
            got = asyncio.Event()

            async def watch() -> None:
                async for ev in follow(sock, {"cmd": "events", "since": 0}):
                    seen.append(ev)
                    got.set()

            watcher = asyncio.create_task(watch())

            async def until(cond: Any) -> None:
                async with asyncio.timeout(20):
                    while not any(cond(e) for e in seen):
                        got.clear()
                        await got.wait()

            await until(lambda e: e.get("kind") == "link" and e.get("state") == "up")
            await until(lambda e: e.get("kind") == "fix" and e.get("state") == "first")
            assert (await request(sock, {"cmd": "sim.gps", "value": "lost"}))["ok"]
            await until(lambda e: e.get("kind") == "fix" and e.get("state") == "lost")
            assert (await request(sock, {"cmd": "sim.gps", "value": "back"}))["ok"]
            await until(lambda e: e.get("kind") == "fix" and e.get("state") == "back")
            assert seen[0] == {"ok": True, "following": "events"}
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await until(lambda e: e.get("kind") == "sos" and e.get("what") == "started")
            await until(lambda e: e.get("cue") == "sos-active")
            assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
            await until(lambda e: e.get("kind") == "sos" and e.get("what") == "ended")
            await until(lambda e: e.get("kind") == "records" and e.get("what") == "stored"
                        and e.get("record") == "sos-end")  # fmt: skip
            await until(lambda e: e.get("kind") == "records" and e.get("what") == "acked")
            started = next(e for e in seen if e.get("what") == "started")
            assert started["trigger"] == "cli" and started["drill"] is False
            assert started["session"]
            bad = await request(sock, {"cmd": "events", "since": "yesterday"})
            assert bad == {"ok": False, "error": "since: epoch seconds"}
            assert daemon.events.followers == own + 1
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for _ in range(250):  # noticed with nothing to send, within 5 s
                if daemon.events.followers == own:
                    break
                await asyncio.sleep(0.02)
            assert daemon.events.followers == own
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)


def test_sosctl_events_says_when_the_daemon_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sosctl(["--data-dir", str(tmp_path), "events", "--json"]) == 3
    assert "sosd is not running" in capsys.readouterr().err
