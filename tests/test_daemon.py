"""sosd and sosctl: the assembled daemon on simulated hardware against a real broker, its
control socket, systemd notifications, signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sosbeacon.device import config as config_mod
from sosbeacon.device.cli import sosctl, sosd_command
from sosbeacon.device.control import NotRunning, request
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.parts import load_backend
from sosbeacon.device.wire import Topics
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.receiver import Receiver
from tests.conftest import REPO
from tests.helpers import eventually, export_problems
from tests.mqtt_env import DURABLE, need_mosquitto


def config_text(data: Path, port: int, *, contact: str = "Alice") -> str:
    contacts = f'[[sos.contacts]]\nname = "{contact}"\n' if contact else ""
    return f"""
[device]
id = "t1"
data_dir = "{data}"
[sos]
countdown = 1.0
{contacts}
[mqtt]
broker = "mqtt://127.0.0.1:{port}"
[uplink]
backoff_max = 2.0
"""


@contextlib.asynccontextmanager
async def broker_and_contact(tmp_path: Path) -> AsyncIterator[tuple[Mosquitto, Receiver]]:
    with Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker:
        rx = Receiver(
            BrokerConfig(host="127.0.0.1", port=broker.port, client_id="contact"),
            Topics.for_device("t1"),
            owntracks_topic="owntracks/sosbeacon/t1",
        )
        await rx.start()
        try:
            yield broker, rx
        finally:
            await rx.close()


async def test_the_daemon_on_simulated_hardware_end_to_end(tmp_path: Path) -> None:
    async with broker_and_contact(tmp_path) as (broker, rx):
        cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))
        daemon = Daemon(cfg, load_backend("sim"))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 15)
        sock = cfg.socket_path
        assert sock.stat().st_mode & 0o777 == 0o660  # owner and group only
        await rx.wait_until(lambda: (rx.json("sosbeacon/t1/status") or {}).get("state") == "online")
        # the simulated button, through the control socket: a long press starts an SOS
        assert (await request(sock, {"cmd": "sim.press", "value": "long"}))["ok"]
        await rx.wait_until(lambda: any(r.kind == "sos-start" for r in rx.records), within=20)
        status = await request(sock, {"cmd": "status"})
        assert status["state"] == "active" and status["armed"] and status["fix"] is not None
        assert status["link"]["connected"] and status["battery"]["pct"] == 85
        # refused requests say why
        again = await request(sock, {"cmd": "sos-start", "now": True})
        assert again == {"ok": False, "error": "an SOS is already active"}
        bad = await request(sock, {"cmd": "reboot"})
        assert not bad["ok"] and "known: status" in bad["error"]
        # the contacts' commands, from the one table, on the control socket too
        sid = status["session"]
        acked = await request(sock, {"cmd": "ack", "session": sid})
        assert acked == {"ok": True, "session": sid}
        stale = await request(sock, {"cmd": "ack", "session": "not-this-one"})
        assert not stale["ok"] and "not the active SOS" in stale["error"]
        assert (await request(sock, {"cmd": "locate-now"}))["ok"]
        await rx.wait_until(lambda: any(r.kind == "sos-ack" for r in rx.records))
        code = await asyncio.to_thread(sosctl, ["--data-dir", str(cfg.device.data_dir), "ack"])
        assert code == 0
        assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
        await rx.wait_until(lambda: any(r.kind == "sos-end" for r in rx.records))

        async def all_delivered() -> bool:  # the contact can hear the end before the PUBACK
            box = (await request(sock, {"cmd": "status"}))["outbox"]
            return bool(box["depth"] == 0 and box["in_flight"] == 0)

        await eventually(all_delivered)
        gave = (await request(sock, {"cmd": "status"}))["outbox"]["gave_way"]
        assert gave["times"] >= 0 and gave["seconds"] >= 0  # the right of way's count
        exported = await request(sock, {"cmd": "export"})
        assert all(r["delivered"] for r in exported["records"])
        kinds = [r["kind"] for r in exported["records"]]
        assert kinds[0] == "sos-start" and "sos-end" in kinds
        assert exported.pop("ok") is True
        assert export_problems(exported) == []  # docs/export.md's format
        assert all(r["expires"] for r in exported["records"])  # 72 h after the end
        # sosctl writes the JSON and the GPX route
        code = await asyncio.to_thread(
            sosctl, ["--data-dir", str(cfg.device.data_dir), "export", "--out", str(tmp_path)]
        )
        assert code == 0
        assert "<trk>" in (tmp_path / "t1-routes.gpx").read_text()
        written = json.loads((tmp_path / "t1-export.json").read_text())
        assert written["records"] == exported["records"] and export_problems(written) == []
        assert (await request(sock, {"cmd": "purge"}))["deleted"] == len(kinds)
        daemon.stop()
        await asyncio.wait_for(task, 15)
        assert rx.ledger().missing() == []
        await rx.wait_until(lambda: (rx.json("sosbeacon/t1/status") or {}).get("why") == "shutdown")


async def test_control_sockets_start_owner_only_and_leave_the_umask_alone(tmp_path: Path) -> None:
    """Several daemons in one process (the tests, a fleet) start their control sockets at
    once. Changing the umask across the start's await once leaked 0o117 into the whole
    process: every later temp directory was born 0600 and PostgreSQL's initdb, run as
    its own user, could not enter it."""
    from sosbeacon.device import control

    async def answer(_: dict[str, object]) -> dict[str, object]:
        return {"ok": True}

    before = os.umask(0o022)
    try:
        servers = await asyncio.gather(
            *(control.serve(tmp_path / f"{n}.sock", answer) for n in range(4))
        )
        now = os.umask(0o022)
        assert now == 0o022
        for n in range(4):
            assert (tmp_path / f"{n}.sock").stat().st_mode & 0o777 == 0o660
            assert (await request(tmp_path / f"{n}.sock", {"cmd": "x"}))["ok"]
        for server in servers:
            server.close()
    finally:
        os.umask(before)


def test_sosctl_says_when_the_daemon_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sosctl(["--data-dir", str(tmp_path), "status"]) == 3
    err = capsys.readouterr().err
    assert "sosd is not running" in err and str(tmp_path / "sosd.sock") in err
    with pytest.raises(NotRunning):
        asyncio.run(request(tmp_path / "sosd.sock", {"cmd": "status"}))


async def test_sosd_process_notifies_systemd_and_stops_cleanly(tmp_path: Path) -> None:
    """The real entry point: READY/STATUS/WATCHDOG to NOTIFY_SOCKET, SIGHUP reload,
    SIGTERM stop with the broker told "shutdown"."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()

    async def next_notification() -> str:
        return (await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)).decode()

    async with broker_and_contact(tmp_path) as (broker, rx):
        conf = tmp_path / "sosbeacon.toml"
        conf.write_text(config_text(tmp_path / "data", broker.port, contact=""))
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(tmp_path / "notify"),
            "WATCHDOG_USEC": "1000000",
            "JOURNAL_STREAM": "8:1",  # as under systemd: journald-style log lines
        }
        proc = await asyncio.create_subprocess_exec(
            *sosd_command(
                "run",
                "--sim",
                "--config",
                str(conf),
            ),
            cwd=REPO,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            ready = await next_notification()
            assert "READY=1" in ready and "STATUS=SOS idle" in ready
            assert "WATCHDOG=1" in await next_notification()  # every half WatchdogSec
            status = await request(tmp_path / "data" / "sosd.sock", {"cmd": "status"})
            assert status["armed"] is False  # no contact configured
            conf.write_text(config_text(tmp_path / "data", broker.port, contact="Bob"))
            proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                status = await request(tmp_path / "data" / "sosd.sock", {"cmd": "status"})
                if status["armed"]:
                    break
                await asyncio.sleep(0.1)
            assert status["armed"] is True  # contacts are reloadable
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in await next_notification():
                pass
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        # log lines carry their journald priority and logger (never matched on wording)
        assert re.search(r"^<3>sosbeacon\.device\.sos: \S", log, re.M)  # an error
        assert re.search(r"^<6>sosd: \S", log, re.M)  # information
        await rx.wait_until(lambda: (rx.json("sosbeacon/t1/status") or {}).get("why") == "shutdown")
    notify.close()


def test_purge_asks_for_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")  # not the word asked for
    assert sosctl(["--data-dir", str(tmp_path), "purge"]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    monkeypatch.setattr("builtins.input", lambda prompt: "purge")  # confirmed: then it asks
    assert sosctl(["--data-dir", str(tmp_path), "purge"]) == 3  # ... the daemon, not running


async def test_missing_hardware_is_one_clear_line_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sosbeacon.sim.clock import SimClock

    clock = SimClock()
    cfg = config_mod.load(text='[device]\nid = "t1"\n')
    daemon = Daemon(cfg, load_backend("sim"), clock=clock, handle_signals=False)
    attempts = 0

    async def button() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise OSError("cannot request GPIO line 17: check the chip")

    await clock.run_until(daemon._supervise("button", button))
    assert attempts == 4  # retried until the hardware answered
    lines = [r.getMessage() for r in caplog.records if r.name == "sosd"]
    assert lines == ["button: cannot request GPIO line 17: check the chip (retrying every 5 s)"]
    assert not any(r.exc_info for r in caplog.records)  # no traceback for missing hardware


async def test_a_second_daemon_touches_nothing_before_it_has_the_lock(
    tmp_path: Path,
) -> None:
    """It refuses clearly, and before that it resumes no session and replaces no
    simulated device link of the first one's."""
    async with broker_and_contact(tmp_path) as (broker, _):
        cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))
        first = Daemon(cfg, load_backend("sim"), handle_signals=False)
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(first.ready.wait(), 15)
        assert (await request(cfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
        link = cfg.device.data_dir / "sim" / "gps0"
        target = os.readlink(link)
        second = Daemon(cfg, load_backend("sim"), handle_signals=False)
        with pytest.raises(RuntimeError, match="another sosd is already running"):
            await second.run()
        assert os.readlink(link) == target  # the first one's device is untouched
        # (the second one stopped before it could resume anything: its events say so)
        assert not any(ev.data.get("what") == "resumed" for ev in second.events.recent())
        assert (await request(cfg.socket_path, {"cmd": "status"}))["state"] == "active"
        first.stop()
        await asyncio.wait_for(task, 15)


async def test_stopping_waits_out_a_task_that_lost_its_cancellation() -> None:
    """A task that swallowed a cancellation (Python 3.11's wait_for can) is cancelled
    again, so a stopping daemon does not wait for it forever."""
    from sosbeacon.device.daemon import _cancel

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as python/cpython#86296 can lose one

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancel([task]), 5)
    assert task.cancelled() and swallowed == 1
