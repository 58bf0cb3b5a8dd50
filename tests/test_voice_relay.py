"""A voice note reaches the contact: the real daemon records it (the simulated microphone
through ALSA), the relay joins its chunks, checks the hash, e-mails it as an attachment
after the alert, and the live page plays it: in Debian's Chromium the audio element
loads the Ogg Opus and reports the recording's duration."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from sosbeacon.device import config as config_mod
from sosbeacon.device.control import request
from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.wire import dumps
from sosbeacon.relay.notify import message_kind
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.mailsink import MailSink
from tests.browser import chromium
from tests.helpers import sim_daemon
from tests.mqtt_env import DURABLE, need_mosquitto
from tests.relay_env import relay_rig, relay_settings
from tests.test_relay_page import device_config, text, until
from tests.test_voice import need_audio_tools


@contextlib.asynccontextmanager
async def contact_world(tmp_path: Path, *, share: bool) -> AsyncIterator[Any]:
    """A broker, a mail sink, the relay and the simulated daemon (sharing or not)."""
    with (
        Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker,
        MailSink() as smtp,
    ):
        cfg = relay_settings(tmp_path, broker.port, **{"notify.services": {"email": smtp.url()}})
        async with relay_rig(cfg) as relay:
            dcfg = config_mod.load(text=voice_device(tmp_path / "data", broker.port, share=share))
            async with sim_daemon(dcfg):
                yield broker, smtp, relay, dcfg


def voice_device(data: Path, port: int, *, share: bool) -> str:
    return device_config(data, port).replace(
        "[mqtt]",
        f"[privacy]\nshare_voice = {str(share).lower()}\nshare_battery = {str(share).lower()}\n"
        f"share_events = {str(share).lower()}\n"
        + ("" if share else 'precision = "100m"\n')
        + "[voice]\nseconds = 4\n[mqtt]",
    )


async def test_the_contact_gets_the_voice_note_by_mail_and_plays_it_on_the_page(
    tmp_path: Path,
) -> None:
    need_audio_tools()
    async with contact_world(tmp_path, share=True) as (broker, smtp, relay, dcfg):
        # a stray press first: the page lists it among the hour before the SOS
        assert (await request(dcfg.socket_path, {"cmd": "sim.press", "value": "short"}))["ok"]
        await asyncio.sleep(1.0)
        assert (await request(dcfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
        alert, voice = await smtp.wait(2, within=40)
        # the alert first, then the note: nobody hears a voice before the SOS
        assert message_kind(alert.subject) == "alert"
        assert voice.subject == "SOS: voice note from Sam"
        assert "voice note attached" in voice.body
        ((name, mime, data),) = voice.attachments
        assert name.endswith(".opus") and data.startswith(b"OggS")
        assert mime in ("audio/ogg", "application/ogg")
        note = await relay.store.voice((await relay.store.list_links())[0]["session_id"])
        assert note is not None and note[2] == data  # the clip the device made
        link = re.search(r"http://\S+/s/[A-Za-z0-9_-]+", alert.body)
        assert link
        with chromium() as drv:
            await asyncio.to_thread(drv.get, link.group(0))
            await until(
                drv,
                "the voice note",
                lambda d: d.find_elements(By.CSS_SELECTOR, "#voicelist audio"),
            )
            script = "return document.querySelector('#voicelist audio').duration"
            duration = await until(drv, "its duration", lambda d: d.execute_script(script) or None)
            assert 3.8 <= float(duration) <= 4.2, duration
            label = drv.find_element(By.CSS_SELECTOR, "#voicelist .voicelabel").text
            assert "4 s" in label
            # Alice's app asks for another (MQTT voice-now): a second player appears
            alice = Connection(BrokerConfig("127.0.0.1", broker.port, client_id="alice"))
            await alice.connect()
            cmd = {"cmd": "voice-now", "by": "Alice", "id": "v-1"}
            await alice.publish("sosbeacon/t1/cmd", dumps(cmd))
            await alice.disconnect()
            await until(
                drv, "the second note",
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#voicelist audio")) == 2,
            )  # fmt: skip
            assert "asked for by Alice" in drv.find_element(By.ID, "voicelist").text
            assert not drv.find_element(By.ID, "withheld").is_displayed()
            before = drv.find_element(By.ID, "before").text
            assert "SOS button pressed" in before, before
            errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors  # media-src allows the relay's own audio
        await asyncio.sleep(1.0)
        assert len(smtp.mails) == 2  # the second note is on the page, not mailed
        # the notes go with the route: 72 h after the end, gone, and the link 410
        assert (await request(dcfg.socket_path, {"cmd": "sos-stop"}))["ok"]
        sid = (await relay.store.list_links())[0]["session_id"]
        await relay.wait(lambda: _ended(relay, sid))
        relay.clock.advance(72 * 3600 + 60)
        assert await relay.relay.sweep_now() == 1
        assert await relay.store.voice(sid) is None
        token = link.group(0).rsplit("/", 1)[1]
        r = await relay.http.get(f"/s/{token}/voice/{note[0]}")
        assert r.status_code == 410


async def test_what_the_owner_does_not_share_never_reaches_the_page(tmp_path: Path) -> None:
    """Voice, battery and events off: no note, no battery, no hour before, and the page
    says the owner chose not to share them."""
    need_audio_tools()
    async with contact_world(tmp_path, share=False) as (_broker, smtp, relay, dcfg):
        assert (await request(dcfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
        (alert,) = await smtp.wait(1, within=30)
        link = re.search(r"http://\S+/s/[A-Za-z0-9_-]+", alert.body)
        assert link and "Battery" not in alert.body
        with chromium() as drv:
            await asyncio.to_thread(drv.get, link.group(0))
            await until(
                drv, "what is withheld",
                lambda d: d.find_element(By.ID, "withheld").is_displayed(),
            )  # fmt: skip
            said = drv.find_element(By.ID, "withheld").text
            assert said == (
                "The owner shares the position to about 100m. The owner chose not to "
                "share the battery, recent events, voice notes."
            )
            await until(drv, "a position", lambda d: "," in text(d, "coords"))
            lat, lon = drv.find_element(By.ID, "coords").text.split(", ")
            assert lat.endswith("000") and lon.endswith("000")  # 3 decimals only
            assert not drv.find_element(By.ID, "beforesec").is_displayed()
            assert drv.find_element(By.ID, "battery").text == "not shared"
            await asyncio.sleep(6)  # longer than a note takes
            assert not drv.find_elements(By.CSS_SELECTOR, "#voicelist audio")
        sid = (await relay.store.list_links())[0]["session_id"]
        assert await relay.store.voice(sid) is None
        page = await relay.store.page(sid)
        assert page["voices"] == [] and page["battery"] in (None, {})
        assert page["before"] == []
        # and on the device: nothing of it in the outbox, so nothing on any topic
        exported = await request(dcfg.socket_path, {"cmd": "export"})
        kinds = {r["kind"] for r in exported["records"]}
        assert "voice" not in kinds and "battery" not in kinds
        start = next(r for r in exported["records"] if r["kind"] == "sos-start")
        assert "battery" not in start["data"] and "events" not in start["data"]
        fixes = [r["data"]["fix"] for r in exported["records"] if r["kind"] == "fix"]
        assert fixes and all(round(f["lat"], 3) == f["lat"] for f in fixes)
        assert all("alt" not in f and f["acc"] >= 111 for f in fixes)
        assert len(smtp.mails) == 1


async def _ended(relay: Any, sid: int) -> bool:
    return bool((await relay.store.page(sid)).get("expires"))


def test_the_note_is_served_in_the_ranges_a_browser_asks_for() -> None:
    from sosbeacon.relay.web import ranged

    data = bytes(range(100))
    whole = ranged(data, "audio/ogg", None)
    assert whole.status_code == 200 and whole.body == data
    assert whole.headers["accept-ranges"] == "bytes"
    part = ranged(data, "audio/ogg", "bytes=10-19")
    assert part.status_code == 206 and part.body == data[10:20]
    assert part.headers["content-range"] == "bytes 10-19/100"
    assert ranged(data, "audio/ogg", "bytes=90-").body == data[90:]
    assert ranged(data, "audio/ogg", "bytes=-5").body == data[95:]
    assert ranged(data, "audio/ogg", "bytes=0-999").body == data  # cut to the end
    bad = ranged(data, "audio/ogg", "bytes=200-")
    assert bad.status_code == 416 and bad.headers["content-range"] == "bytes */100"
    assert ranged(data, "audio/ogg", "bytes=5-2").status_code == 416
    assert ranged(data, "audio/ogg", "pages=1").status_code == 200  # not understood: all
