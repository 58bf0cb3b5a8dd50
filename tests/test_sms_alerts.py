"""The SOS texts, end to end: the real daemon on simulated hardware, a real broker and
no relay (so no receipt ever comes), the simulated modem behind the real driver on a
pty. Nothing is texted outside an SOS; an unconfirmed SOS is; a contact's OK
acknowledges it and is thanked; the end goes to whoever was texted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sosbeacon.device import config as config_mod
from sosbeacon.device.clock import ScaledClock
from sosbeacon.device.control import request
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.outbox import SMS_LOG
from sosbeacon.device.parts import load_backend
from sosbeacon.sim.atmodem import SimAtModem
from tests.test_daemon import broker_and_contact

ALICE = "+447700900123"


def config_text(data: Path, port: int) -> str:
    return f"""
[device]
id = "t1"
data_dir = "{data}"
[sos]
owner = "Sam"
countdown = 1.0
[[sos.contacts]]
name = "Alice"
reach = "alice@example.org, +44 7700 900123"
[[sos.contacts]]
name = "Carol"
reach = "tgram:123456"
[sms]
after = 2
every = 600
[mqtt]
broker = "mqtt://127.0.0.1:{port}"
"""


async def texts(daemon: Daemon, network: SimAtModem, n: int, within: float = 15.0) -> None:
    """Until the simulated network has carried ``n`` texts (each one an ``sms`` event)."""
    async with asyncio.timeout(within), daemon.events.follow() as stream:
        if len(network.sent) >= n:
            return
        async for ev in stream:
            if ev.kind.value == "sms" and len(network.sent) >= n:
                return


async def test_an_unconfirmed_sos_is_texted_acknowledged_by_reply_and_ended(
    tmp_path: Path,
) -> None:
    async with broker_and_contact(tmp_path) as (broker, _):
        cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))
        daemon = Daemon(cfg, load_backend("sim"), handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 15)
            assert daemon.parts is not None
            network = daemon.parts.handles["world"].at_modem
            sock = cfg.socket_path
            await asyncio.sleep(3)
            assert network.sent == []  # no SOS: nothing, ever
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await texts(daemon, network, 1)
            (alert,) = network.sent  # Alice only: Carol has no phone number
            assert alert.to == ALICE
            lines = alert.text.splitlines()
            assert lines[0] == "SOS: Sam needs help." and lines[-1] == "Reply OK to acknowledge."
            assert any(x.startswith(("Position: ", "Position: no fix")) for x in lines)
            # a stranger's OK does nothing; Alice's acknowledges, and she is thanked
            await request(sock, {"cmd": "sim.sms-from", "value": "+447700900999 OK"})
            await request(sock, {"cmd": "sim.sms-from", "value": f"{ALICE} ok, coming"})
            await texts(daemon, network, 2)
            assert network.sent[1].text.startswith("Thank you, Alice")
            status = await request(sock, {"cmd": "status"})
            assert status["state"] == "active"
            sms = status["sms"]
            assert (sms["texting"], sms["sent"], sms["acks"], sms["last_error"]) == (
                False,
                2,
                1,
                None,
            )
            assert sms["modem"] == {
                "ready": True, "port": str(network.path), "registered": "home",
                "on_network": True, "signal_dbm": -77,
            }  # fmt: skip
            from sosbeacon.device.cli import format_status

            shown = format_status(status)
            assert "2 text(s) sent since start, 1 OK by SMS" in shown
            assert "modem       home, -77 dBm" in shown
            # the STATUS line of every watchdog tick puts no AT command on the line: it
            # shows what the owner's last status heard
            asked = network.commands
            line = await daemon.status_line()
            assert network.commands == asked
            assert line.endswith("; modem ready, home -77 dBm"), line
            events = [e.data for e in daemon.events.recent() if e.kind.value == "sos"]
            assert any(
                e.get("what") == "acknowledged" and "SMS" in str(e.get("by")) for e in events
            )
            assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
            await texts(daemon, network, 3)
            assert network.sent[2].to == ALICE and network.sent[2].text.startswith("SOS ended")
            await asyncio.sleep(1)
            assert len(network.sent) == 3  # one end, and no more alerts after the ack
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)


async def test_a_restart_sends_no_text_twice_and_still_sends_the_end(tmp_path: Path) -> None:
    """The daemon stops after alerting and starts again: the resumed SOS texts nobody
    again before its next round, and its end still goes to whoever was texted."""
    async with broker_and_contact(tmp_path) as (broker, _):
        cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))

        async def started() -> tuple[Daemon, asyncio.Task[None]]:
            d = Daemon(cfg, load_backend("sim"), handle_signals=False)
            t = asyncio.create_task(d.run())
            await asyncio.wait_for(d.ready.wait(), 15)
            return d, t

        daemon, task = await started()
        network = daemon.parts.handles["world"].at_modem  # type: ignore[union-attr]
        assert (await request(cfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
        await texts(daemon, network, 1)
        daemon.stop()
        await asyncio.wait_for(task, 15)
        daemon, task = await started()  # the SOS resumes; a new simulated network
        try:
            network = daemon.parts.handles["world"].at_modem  # type: ignore[union-attr]
            await asyncio.sleep(4)  # twice sms.after: the resumed SOS is still unconfirmed
            assert network.sent == []  # alerted already: the next round is 600 s away
            assert (await request(cfg.socket_path, {"cmd": "sos-stop"}))["ok"]
            await texts(daemon, network, 1)
            (end,) = network.sent
            assert end.to == ALICE and end.text.startswith("SOS ended")
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)


def test_status_says_plainly_when_texts_cannot_go() -> None:
    from sosbeacon.device.cli import format_status

    base = {
        "device": "t1", "armed": True, "state": "active", "session": "s1", "fix": None,
        "battery": None, "battery_level": "ok",
        "link": {"connected": False, "broker": "127.0.0.1:1883", "last_error": None},
        "outbox": {"depth": 3, "in_flight": 0, "oldest_age": 4.0, "kept": 0},
    }  # fmt: skip
    sms = {"texting": True, "sent": 1, "acks": 0, "last_error": "+CMS ERROR: 331"}
    down = format_status({**base, "sms": {**sms, "modem": {"ready": False, "port": "/dev/x"}}})
    assert "TEXTING THE CONTACTS" in down and "last failure: +CMS ERROR: 331" in down
    assert "modem       NOT READY on /dev/x (texts cannot go)" in down
    lost = {"ready": True, "port": "/dev/x", "registered": "denied", "on_network": False,
            "signal_dbm": None}  # fmt: skip
    assert "modem       denied (NOT ON A NETWORK: texts wait)" in format_status(
        {**base, "sms": {**sms, "modem": lost}}
    )


async def test_an_end_owed_to_an_earlier_sos_still_goes_when_a_new_one_has_begun(
    tmp_path: Path,
) -> None:
    """SOS A is texted; it ends while the modem has no network, so its end cannot go;
    SOS B begins at once. B neither overwrites nor forgets A's end: once the network is
    back, Alice gets A's end (on the retry) and B's alert, and the log keeps only what
    is still owed. (Ten times real time: the 30 s retry takes 3 s.)"""
    async with broker_and_contact(tmp_path) as (broker, _):
        text = config_text(tmp_path / "data", broker.port).replace("after = 2", "after = 20")
        cfg = config_mod.load(text=text)
        daemon = Daemon(cfg, load_backend("sim"), clock=ScaledClock(10), handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 15)
            assert daemon.parts is not None and daemon.sms is not None
            network = daemon.parts.handles["world"].at_modem
            sock = cfg.socket_path
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await texts(daemon, network, 1)
            first = (await request(sock, {"cmd": "status"}))["session"]
            network.state.registration = 3  # denied: texts cannot go
            assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            second = (await request(sock, {"cmd": "status"}))["session"]
            assert second != first
            logged = await daemon.sms._state.get(SMS_LOG)
            assert list(logged["sessions"]) == [first, second]  # A's end is owed
            assert logged["sessions"][first]["ended"] is True
            status = await request(sock, {"cmd": "status"})
            assert status["sms"]["ends_owed"] == 1 and "331" in str(status["sms"]["last_error"])
            network.state.registration = 1
            await texts(daemon, network, 3, within=20)
            kinds = sorted(s.text.split(":")[0] for s in network.sent[1:])
            assert kinds == ["SOS", "SOS ended"]
            assert all(s.to == ALICE for s in network.sent)
            await asyncio.sleep(0.5)
            logged = await daemon.sms._state.get(SMS_LOG)
            assert list(logged["sessions"]) == [second]  # A's texting is over
            assert (await request(sock, {"cmd": "status"}))["sms"]["ends_owed"] == 0
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)


async def test_a_text_carries_the_contact_s_own_link_once_the_relay_has_given_it(
    tmp_path: Path,
) -> None:
    """With data, the SOS reaches the relay, whose receipt gives the device each
    contact's link: nothing is texted. Then the data link dies: the alert that goes
    after ``sms.after`` carries Alice's own link (the one her e-mail has)."""
    from sosbeacon.sim.mailsink import MailSink
    from tests.relay_env import relay_rig, relay_settings

    async with broker_and_contact(tmp_path) as (broker, _):
        with MailSink() as smtp:
            services = {"notify.services": {"email": smtp.url()}}
            async with relay_rig(relay_settings(tmp_path, broker.port, **services)) as relay:
                cfg = config_mod.load(text=config_text(tmp_path / "data", broker.port))
                daemon = Daemon(cfg, load_backend("sim"), handle_signals=False)
                task = asyncio.create_task(daemon.run())
                try:
                    await asyncio.wait_for(daemon.ready.wait(), 15)
                    assert daemon.parts is not None and daemon.uplink is not None
                    network = daemon.parts.handles["world"].at_modem
                    assert (await request(cfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
                    delivery = daemon.uplink.delivery

                    def linked() -> bool:
                        r = delivery.receipt or {}
                        return any("link" in c for c in r.get("contacts", []))

                    await relay.wait(linked)
                    alice_link = (await relay.links())[0]
                    await asyncio.sleep(3)  # past sms.after: confirmed, so not texted
                    assert network.sent == []
                    broker.kill()  # the data link dies
                    await texts(daemon, network, 1, within=20)
                    # longer than one SMS with the link: sent in parts, joined by her phone
                    parts = network.sent
                    assert {p.to for p in parts} == {ALICE} and len(parts) == 2
                    assert [p.concat[1:] for p in parts if p.concat] == [(2, 1), (2, 2)]
                    text = "".join(p.text for p in parts)
                    assert text.startswith("SOS: Sam needs help.")
                    assert f"Route: {alice_link}" in text.splitlines()
                    assert alice_link in smtp.mails[0].body  # the same link as her e-mail
                finally:
                    daemon.stop()
                    await asyncio.wait_for(task, 15)


def test_the_status_line_says_in_a_few_words_whether_texts_can_go() -> None:
    from sosbeacon.device.sms_alerts import summary

    ready = {"ready": True, "port": "/dev/x", "registered": "home", "on_network": True,
             "signal_dbm": -91}  # fmt: skip
    assert summary({"modem": ready}) == "modem ready, home -91 dBm"
    assert summary({"modem": {"ready": True, "port": "/dev/x"}}) == "modem ready"
    assert summary({"modem": {"ready": False, "port": "/dev/x"}}) == "modem NOT READY"
    lost = {**ready, "registered": "denied", "on_network": False}
    texting = {"modem": lost, "texting": True, "sent": 2, "ends_owed": 1}
    assert summary(texting) == (
        "modem OFF NETWORK (denied), TEXTING THE CONTACTS, 2 sent, 1 end text(s) owed"
    )


async def test_a_simulated_device_without_a_modem_has_no_sms_and_says_so(tmp_path: Path) -> None:
    """``modem.backend = "none"`` (as in ``sos-sim fleet``): the simulator builds no modem
    pty, the daemon has no SMS link, and the modem's controls answer with the reason."""
    async with broker_and_contact(tmp_path) as (broker, _):
        cfg = config_mod.load(
            text=config_text(tmp_path / "data", broker.port) + '[modem]\nbackend = "none"\n'
        )
        daemon = Daemon(cfg, load_backend("sim"), handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 15)
            assert daemon.parts is not None
            assert daemon.parts.sms is None
            assert daemon.parts.handles["world"].at_modem is None
            assert not (tmp_path / "data" / "sim" / "modem0").exists()
            reply = await request(cfg.socket_path, {"cmd": "sim.sms-log"})
            assert not reply["ok"] and "modem.backend" in reply["error"], reply
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)
