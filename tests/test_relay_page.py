"""The contact's page in a real browser (Debian's Chromium, headless, through Selenium),
against the real daemon on simulated hardware, a real broker and the relay: open the
link from the e-mail, see the SOS and its route, see a new point arrive, press "I'm on
it" and see the device confirm, see the end, and after the 72 hours the 410 page."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from sosbeacon.device import config as config_mod
from sosbeacon.device.control import request
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.parts import load_backend
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.mailsink import MailSink
from tests.browser import chromium
from tests.conftest import REPO
from tests.mqtt_env import DURABLE, need_mosquitto
from tests.relay_env import relay_rig, relay_settings

H72 = 72 * 3600


def device_config(data: Path, port: int) -> str:
    return f"""
[device]
id = "t1"
data_dir = "{data}"
[sos]
countdown = 0.0
min_distance = 0.0
owner = "Sam"
[[sos.contacts]]
name = "Alice"
reach = "alice@example.org"
[mqtt]
broker = "mqtt://127.0.0.1:{port}"
[uplink]
backoff_max = 2.0
sos_interval = 0.5
"""


def text(drv: WebDriver, element: str) -> str:
    return str(drv.find_element(By.ID, element).text)


async def until(drv: WebDriver, what: str, cond: Any, within: float = 30.0) -> Any:
    """Poll the browser (in a thread: the relay runs on this loop) until ``cond(drv)``."""
    async with asyncio.timeout(within):
        while True:
            got = await asyncio.to_thread(cond, drv)
            if got:
                return got
            await asyncio.sleep(0.2)
    raise AssertionError(what)  # pragma: no cover


async def test_the_contact_follows_the_sos_on_the_page_and_acknowledges_it(
    tmp_path: Path,
) -> None:
    with (
        Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker,
        MailSink() as smtp,
    ):
        cfg = relay_settings(tmp_path, broker.port, **{"notify.services": {"email": smtp.url()}})
        async with relay_rig(cfg) as relay:
            dcfg = config_mod.load(text=device_config(tmp_path / "data", broker.port))
            daemon = Daemon(dcfg, load_backend("sim"))
            task = asyncio.create_task(daemon.run())
            try:
                await asyncio.wait_for(daemon.ready.wait(), 15)
                sock = dcfg.socket_path
                assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
                mail = (await relay.wait(lambda: smtp.mails))[0]
                link = re.search(r"http://\S+/s/[A-Za-z0-9_-]+", mail.body)
                assert link, mail.body
                with chromium() as drv:
                    await run_page(drv, link.group(0), relay, sock)
            finally:
                daemon.stop()
                await asyncio.wait_for(task, 15)


async def run_page(drv: WebDriver, link: str, relay: Any, sock: Path) -> None:
    await asyncio.to_thread(drv.get, link)
    await until(drv, "the SOS shown", lambda d: "SOS: Sam needs help" in text(d, "title"))
    assert "SOS active" in text(drv, "state")
    assert text(drv, "drill") == ""  # the banner is hidden: not a drill
    await until(
        drv, "the age of the position", lambda d: re.fullmatch(r"\d+ s ago", text(d, "age"))
    )
    assert text(drv, "acc").startswith("±")
    assert text(drv, "battery").startswith("85%")
    coords = text(drv, "coords")
    assert re.fullmatch(r"-?\d+\.\d{6}, -?\d+\.\d{6}", coords), coords
    geo = drv.find_element(By.ID, "geo").get_attribute("href")
    assert geo == "geo:" + coords.replace(" ", "") + "?q=" + coords.replace(" ", "")

    # the route grows while the page is open: live, no reload
    def points(d: WebDriver) -> int:
        return int(d.find_element(By.ID, "map").get_attribute("data-points") or 0)

    first = await until(drv, "a route point", points)
    drv.execute_script("window.__same_page = true")
    await until(drv, "a new point", lambda d: points(d) > first)
    assert drv.execute_script("return window.__same_page") is True
    # the map drew it: the route line and its points are SVG paths, with no tiles
    assert drv.find_elements(By.CSS_SELECTOR, "#map path.leaflet-interactive")

    # "I'm on it": the command reaches the device, and the device's answer the page
    await asyncio.to_thread(drv.find_element(By.ID, "ack").click)
    await until(
        drv, "the device's confirmation",
        lambda d: "The device confirmed" in text(d, "ackstate"),
    )  # fmt: skip
    status = await request(sock, {"cmd": "status"})
    assert status["state"] == "active"
    if os.environ.get("SOSBEACON_SCREENSHOT"):
        drv.save_screenshot(str(REPO / "docs" / "relay-page.png"))

    # nothing the page loaded carries a location, and nothing came from elsewhere
    urls = drv.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    lat, lon = coords.split(", ")
    for u in urls:
        assert u.startswith(relay.base), u
        assert lat[:6] not in u and lon[:6] not in u, u
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # a CSP violation would be one

    # the SOS ends: the page says so, and when the route goes
    assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
    await until(drv, "the end shown", lambda d: "SOS ended" in text(d, "state"))
    assert "route is deleted at" in text(drv, "state")
    # 72 hours later: 410, and a page that says the route has expired
    relay.clock.advance(H72 + 60)
    await asyncio.to_thread(drv.refresh)
    await until(drv, "the expired page", lambda d: "expired" in d.page_source)
    assert "Route no longer available" in drv.title


async def test_a_drill_shows_its_banner_and_a_buffered_backlog_says_it_is_arriving(
    tmp_path: Path,
) -> None:
    """Crafted wire messages straight to the broker: a drill, then route points 4-5 ahead
    of 2-3 (the device is draining its buffer): the page says points are arriving until
    the hole fills. A revoked link then answers 410 in the browser too."""
    from datetime import UTC, datetime

    from sosbeacon.device.mqtt import BrokerConfig, Connection
    from sosbeacon.device.records import Priority, Record, RecordKind, Stored
    from sosbeacon.device.wire import encode_sos, encode_track, track_row
    from tests.mqtt_env import fix_record

    with (
        Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker,
        MailSink() as smtp,
    ):
        cfg = relay_settings(tmp_path, broker.port, **{"notify.services": {"email": smtp.url()}})
        async with relay_rig(cfg) as relay:
            dev = Connection(BrokerConfig(host="127.0.0.1", port=broker.port, client_id="d2"))
            await dev.connect()
            box, sess = "0123456789abcdef", "feedfacecafebeef"
            start = Record(
                RecordKind.SOS_START, datetime.now(UTC),
                {"owner": "Sam", "contacts": [{"name": "Alice", "reach": "alice@example.org"}]},
                Priority.SOS, sess, drill=True,
            )  # fmt: skip
            await dev.publish("sosbeacon/d2/sos", encode_sos(box, 1, start), retain=True)

            def track(*seqs: int) -> bytes:
                items = []
                for s in seqs:
                    r = fix_record(s, session=sess)
                    r = Record(r.kind, r.time, r.data, r.priority, sess, drill=True)
                    items.append(Stored(s, None, r, track_row(r)))
                return encode_track(box, items)

            await dev.publish("sosbeacon/d2/track", track(4, 5))
            mail = (await relay.wait(lambda: smtp.mails))[0]
            assert mail.subject.startswith("DRILL (not a real emergency): ")
            link = re.search(r"http://\S+/s/[A-Za-z0-9_-]+", mail.body)
            assert link
            with chromium() as drv:
                await asyncio.to_thread(drv.get, link.group(0))
                await until(drv, "the drill banner", lambda d: d.find_element(By.ID, "drill")
                            .is_displayed())  # fmt: skip
                banner = text(drv, "drill")
                assert "DRILL" in banner and "not a real emergency" in banner
                assert "Drill: Sam is testing their SOS" in text(drv, "title")
                await until(drv, "points arriving", lambda d: d.find_element(By.ID, "buffered")
                            .is_displayed())  # fmt: skip
                assert "arriving" in text(drv, "buffered")
                await dev.publish("sosbeacon/d2/track", track(2, 3))
                await until(drv, "the hole filled", lambda d: not d.find_element(By.ID, "buffered")
                            .is_displayed())  # fmt: skip
                assert text(drv, "npoints") == "4 points"
                rows = await relay.store.list_links()
                assert await relay.store.revoke(rows[0]["id"], now=relay.clock())
                await asyncio.to_thread(drv.refresh)
                await until(drv, "the withdrawn page", lambda d: "withdrawn" in d.page_source)
            await dev.disconnect()
