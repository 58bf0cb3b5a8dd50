"""The contacts' relay, end to end through the real device outbox and uplink, a real
Mosquitto, the relay's database, real local mail and HTTP sinks, and its web page."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.wire import Topics
from sosbeacon.sim.mailsink import MailSink
from tests.helpers import eventually
from tests.mqtt_env import Rig, fix_record, rig
from tests.relay_env import HttpSink, RelayRig, relay_rig, relay_settings

CONTACTS = [
    {"name": "Alice", "reach": "alice@example.org"},
    {"name": "Bob", "reach": "json:bob"},
]
H72 = 72 * 3600


def sos_start(session: str, *, drill: bool = False, contacts: Any = None) -> Record:
    now = datetime.now(UTC)
    return Record(
        kind=RecordKind.SOS_START,
        time=now,
        data={
            "trigger": "button:long-press",
            "owner": "Sam",
            "contacts": CONTACTS if contacts is None else contacts,
            "shared": {"precision": "exact", "battery": True, "events": True},
            "fix": {"t": now.isoformat(), "lat": 55.944211, "lon": -3.161034, "acc": 4.2},
            "fix_age": 1.5,
            "battery": {"pct": 81, "status": "discharging"},
        },
        priority=Priority.SOS,
        session=session,
        drill=drill,
    )


def sos_end(session: str, *, ended: datetime, drill: bool = False) -> Record:
    return Record(
        kind=RecordKind.SOS_END,
        time=ended,
        data={"reason": "cli", "points": 3},
        priority=Priority.SOS,
        session=session,
        drill=drill,
        expires=ended + timedelta(seconds=H72),
    )


class World:
    def __init__(self, device: Rig, relay: RelayRig, smtp: MailSink, hook: HttpSink) -> None:
        self.device, self.relay, self.smtp, self.hook = device, relay, smtp, hook


@pytest.fixture(params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    db_url = ""
    if request.param == "postgresql":
        db_url = request.getfixturevalue("pg").new_db(f"t{uuid.uuid4().hex[:12]}")
    with MailSink() as smtp, HttpSink() as hook:
        async with rig(tmp_path) as device:
            cfg = relay_settings(
                tmp_path,
                device.broker.port,
                db_url=db_url,
                **{"notify.services": {"email": smtp.url(), "json": hook.url()}},
            )
            async with relay_rig(cfg) as relay:
                yield World(device, relay, smtp, hook)


async def test_an_sos_reaches_each_contact_once_with_a_link_to_a_live_page(world: World) -> None:
    dev, relay = world.device, world.relay
    sess = uuid.uuid4().hex[:16]
    await dev.outbox.add(sos_start(sess))
    for i in range(3):
        await dev.outbox.add(fix_record(i, session=sess))
    battery = {"pct": 79, "status": "discharging", "v": 3.81}
    await dev.outbox.add(
        Record(RecordKind.BATTERY, datetime.now(UTC), {"battery": battery}, Priority.LIVE, sess)
    )

    mails = await relay.wait(lambda: world.smtp.mails)
    posts = await relay.wait(lambda: world.hook.posts)
    links = await relay.links()
    assert len(links) == 2 and links[0] != links[1]
    alice, bob = links
    mail = mails[0]
    assert mail.to == ["alice@example.org"]
    assert mail.subject == "SOS: Sam needs help"
    assert alice in mail.body and bob not in mail.body
    assert "Last position" in mail.body and "accurate to about 4 m" in mail.body
    assert "Battery 81%" in mail.body and "I'm on it" in mail.body
    path, body = posts[0]
    assert path == "/hook/bob"
    assert bob in body["message"] and body["title"] == "SOS: Sam needs help"

    # the page: no login, and the headers that keep the link to itself
    token = alice.rsplit("/", 1)[1]
    assert len(token) >= 22  # at least 128 bits, URL-safe
    r = await relay.http.get(f"/s/{token}")
    assert (r.status_code == 200 and "I&#39;m on it" in r.text) or "I'm on it" in r.text
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "noindex" in r.headers["X-Robots-Tag"]
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp

    async def page_data() -> Any:
        d = (await relay.http.get(f"/s/{token}/data")).json()
        return d if len(d["points"]) == 3 and d["battery"] != {} else None

    data = await relay.wait(page_data)
    assert data["owner"] == "Sam" and data["drill"] is False and data["ended"] is None
    assert [p[0] for p in data["points"]] == [2, 3, 4]  # seq 1 is the sos-start
    assert data["points"][0][2:] == [55.944, -3.161, 5]  # lat, lon, accuracy (m, rounded up)
    await relay.wait(lambda: _battery(relay, token, battery))
    assert "alice@example.org" not in r.text + json.dumps(data)  # addresses stay private

    # each contact is notified once; the opening is recorded for Alice alone
    await asyncio.sleep(1.5)
    assert len(world.smtp.mails) == 1 and len(world.hook.posts) == 1
    rows = {r["name"]: r for r in await relay.store.list_links()}
    assert rows["Alice"]["opens"] == 1 and rows["Alice"]["first_opened"] is not None
    assert rows["Bob"]["opens"] == 0

    # the receipt goes back to the device: stored seqs, who was notified, who opened
    topics = Topics.for_device("dev1")
    receipt_topic = f"{topics.base}/receipt"

    def receipt() -> Any:
        got = dev.receiver.json(receipt_topic)
        if got and got.get("contacts") and got["contacts"][0].get("opened"):
            return got
        return None

    got = await relay.wait(receipt)
    assert got["sess"] == sess and got["sos_stored"]
    assert list(got["stored"].values()) == ["1-5"]
    by = {c["name"]: c for c in got["contacts"]}
    # each contact's place and own link: the device texts it when there is no data
    assert [(c["contact"], c["link"]) for c in got["contacts"]] == [(0, alice), (1, bob)]
    assert by["Alice"]["notified"][0]["channel"] == "email"
    assert by["Alice"]["notified"][0]["state"] == "sent"
    assert by["Bob"]["notified"][0] == {**by["Bob"]["notified"][0], "state": "sent"}
    assert by["Bob"]["opened"] is None


async def test_a_link_lives_until_72_hours_after_the_end_then_answers_410(
    world: World,
) -> None:
    dev, relay = world.device, world.relay
    sess = uuid.uuid4().hex[:16]
    await dev.outbox.add(sos_start(sess))
    await dev.outbox.add(fix_record(0, session=sess))
    await relay.wait(lambda: len(world.smtp.mails) == 1)
    alice = (await relay.links())[0].rsplit("/", 1)[1]
    ended = datetime.fromtimestamp(relay.clock(), UTC)
    await dev.outbox.add(sos_end(sess, ended=ended))

    # "SOS ended" to the same contacts
    ends = await relay.wait(lambda: [m for m in world.smtp.mails if "ended" in m.subject])
    assert "route stays available until" in ends[0].body
    assert alice in ends[0].body

    async def ended_shown() -> Any:
        d = (await relay.http.get(f"/s/{alice}/data")).json()
        return d if d["ended"] else None

    d = await relay.wait(ended_shown)
    assert d["expires"] == pytest.approx(ended.timestamp() + H72, abs=1)

    # a second before the 72 hours: still there
    relay.clock.advance(H72 - 2)
    assert await relay.relay.sweep_now() == 0
    assert (await relay.http.get(f"/s/{alice}")).status_code == 200
    # after them: 410 Gone, a page that says so, and the data is deleted
    relay.clock.advance(3)
    r = await relay.http.get(f"/s/{alice}")
    assert r.status_code == 410 and "expired" in r.text
    assert await relay.relay.sweep_now() == 1
    counts = await relay.store.counts()
    assert counts["sessions"] == 0 and counts["records"] == 0 and counts["links"] == 0
    for path in (f"/s/{alice}", f"/s/{alice}/data", f"/s/{alice}/events"):
        assert (await relay.http.get(path)).status_code == 410, path
    assert (await relay.http.post(f"/s/{alice}/ack")).status_code == 410


async def test_a_revoked_link_answers_410_and_a_forged_one_404(world: World) -> None:
    dev, relay = world.device, world.relay
    sess = uuid.uuid4().hex[:16]
    await dev.outbox.add(sos_start(sess))
    await relay.wait(lambda: len(world.smtp.mails) == 1)
    alice, bob = [u.rsplit("/", 1)[1] for u in await relay.links()]
    rows = await relay.store.list_links()
    assert await relay.store.revoke(rows[1]["id"], now=relay.clock())
    assert (await relay.http.get(f"/s/{bob}")).status_code == 410
    assert (await relay.http.get(f"/s/{alice}")).status_code == 200
    forged = alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB")
    for bad in (forged, "x", "../../etc/passwd", "A" * 500):
        assert (await relay.http.get(f"/s/{bad}")).status_code == 404, bad
    assert relay.relay.counters.refused_tokens >= 3


async def test_a_failed_send_is_retried_and_a_restart_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    with MailSink() as smtp, HttpSink() as hook:
        hook.status = 500  # the messenger is down at first
        async with rig(tmp_path) as dev:
            cfg = relay_settings(
                tmp_path, dev.broker.port,
                **{"notify.services": {"email": smtp.url(), "json": hook.url()}},
            )  # fmt: skip
            sess = uuid.uuid4().hex[:16]
            async with relay_rig(cfg) as relay:
                await dev.outbox.add(sos_start(sess))
                await relay.wait(lambda: len(smtp.mails) == 1 and len(hook.posts) >= 2)
                hook.status = 200
                await relay.wait(lambda: _sent(relay, "Bob"), within=10)
            posts = len(hook.posts)
            assert posts >= 3  # two refused, then the one that went
            async with relay_rig(cfg) as relay:  # the same database, a new process
                await asyncio.sleep(2.0)
                assert len(smtp.mails) == 1 and len(hook.posts) == posts
                assert await _state_async(relay, "Alice") == "sent"


async def _battery(relay: RelayRig, token: str, expected: dict[str, Any]) -> bool:
    """The page shows the newest battery sample (stored as JSON: SQLite and PostgreSQL)."""
    return bool((await relay.http.get(f"/s/{token}/data")).json()["battery"] == expected)


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _sent(relay: RelayRig, name: str) -> bool:
    return await _state_async(relay, name) == "sent"


async def _state_async(relay: RelayRig, name: str) -> str | None:
    receipt = await relay.store.receipt("dev1", link_base="")
    for c in receipt.get("contacts", []):
        if c["name"] == name and c["notified"]:
            return str(c["notified"][0]["state"])
    return None


async def test_duplicates_and_garbage_are_counted_never_stored_twice_or_fatal(
    world: World,
) -> None:
    dev, relay = world.device, world.relay
    sess = uuid.uuid4().hex[:16]
    await dev.outbox.add(sos_start(sess))
    await dev.outbox.add(fix_record(0, session=sess))
    await relay.wait(lambda: len(world.smtp.mails) == 1)
    await relay.wait(lambda: relay.relay.counters.records >= 2)
    # the same message again (a resend after a reconnect), and garbage
    track = next(d for d in dev.receiver.history if d.topic.endswith("/track"))
    from sosbeacon.device.mqtt import BrokerConfig, Connection

    conn = Connection(BrokerConfig(host="127.0.0.1", port=dev.broker.port, client_id="dev1x"))
    await conn.connect()
    try:
        await conn.publish(track.topic, track.payload)
        for junk in (b"{", b"[]", b'{"v":1}', b'{"v":1,"box":"b","fix":[["x"]]}', b"\xff",
                     b'{"v":1,"box":"b","fix":[[1,1e308,1,2]]}'):  # fmt: skip
            await conn.publish("sosbeacon/dev1/track", junk)
        # decodable, but nonsense: a seq that is not a number, gap ranges that are not
        # ranges. Counted and left out; never a message redelivered for ever.
        odd = (
            b'{"v":1,"box":"b","sess":"s","fix":[["x",1,2,3]]}',
            b'{"v":1,"box":"b","gap":[{"seq":1,"t":1,"ranges":[["a"],[5,2],1]}]}',
        )
        for payload in odd:
            await conn.publish("sosbeacon/dev1/track", payload)
        await conn.publish("sosbeacon/dev1/sos", b'{"v":1,"box":"b"}')
    finally:
        await conn.disconnect()
    await relay.wait(lambda: relay.relay.counters.undecodable >= 7)
    await relay.wait(lambda: relay.relay.counters.duplicates >= 2)
    counts = await relay.store.counts()
    assert counts["records"] == 2  # the gap notice of box "b" has no session: ledger only
    assert relay.relay.counters.unstorable == 0
    # and it still works
    await dev.outbox.add(fix_record(1, session=sess))

    async def stored() -> int:
        return (await relay.store.counts())["records"]

    await relay.wait(lambda: _is(stored(), 3))


async def test_an_sos_nobody_heard_is_marked_until_the_relay_s_receipt_arrives(
    tmp_path: Path,
) -> None:
    """PUBACK 0x10 (no matching subscribers): the device says the SOS has not reached
    anyone, until a relay that starts later picks up the retained sos-start and sends
    its receipt; ``sosctl status`` then names who was notified."""
    from sosbeacon.device.clock import MonotonicClock
    from sosbeacon.device.mqtt import BrokerConfig
    from sosbeacon.device.outbox import Outbox
    from sosbeacon.device.receipts import describe
    from sosbeacon.device.uplink import Uplink, UplinkConfig
    from sosbeacon.sim.broker import Mosquitto
    from tests.mqtt_env import DURABLE, need_mosquitto

    with (
        MailSink() as smtp,
        Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker,
    ):
        async with await Outbox.open(tmp_path / "outbox.db") as box:
            uplink = Uplink(
                config=UplinkConfig(device_id="dev1", batch_count=1),
                broker=BrokerConfig(host="127.0.0.1", port=broker.port),
                outbox=box,
                clock=MonotonicClock(),
            )
            task = asyncio.create_task(uplink.run())
            try:
                sess = uuid.uuid4().hex[:16]
                await box.add(sos_start(sess, contacts=CONTACTS[:1]))
                async with asyncio.timeout(15):
                    while True:  # the mark is made before the PUBACK is counted
                        uplink.acked.clear()
                        if uplink.delivery.unheard == sess:
                            break
                        await uplink.acked.wait()
                lines = describe(uplink.delivery.status(sess))
                assert lines[0].startswith("NOT YET RECEIVED BY ANYONE")

                cfg = relay_settings(
                    tmp_path, broker.port, **{"notify.services": {"email": smtp.url()}}
                )
                async with relay_rig(cfg) as relay:
                    await relay.wait(lambda: smtp.mails)
                    await relay.wait(lambda: uplink.delivery.unheard is None)

                    def told() -> list[str]:
                        text = describe(uplink.delivery.status(sess))
                        return text if text and "notified (email, ok)" in text[0] else []

                    lines = await relay.wait(told)
                assert lines == ["SOS delivered to the relay; Alice notified (email, ok)"]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def sos_ack(session: str, *, contact: Any, via: Any = "sms", by: str = "Alice (SMS)") -> Record:
    return Record(
        kind=RecordKind.SOS_ACK,
        time=datetime.now(UTC),
        data={"by": by, "contact": contact, "via": via},
        priority=Priority.SOS,
        session=session,
    )


async def test_a_contact_who_acknowledged_by_sms_gets_the_link_and_no_second_alarm(
    world: World,
) -> None:
    """The device had no data: it texted Alice, she replied OK. Data returns and the
    backlog arrives, its start a minute late, the acknowledgement right behind it.
    The late start's alerts wait ``notify.backlog_hold``, so Alice gets her link
    without a second alarm, and Bob (who has not answered) the alert; the page and the
    receipt show Alice on it. An acknowledgement that names no contact changes nothing."""
    dev, relay = world.device, world.relay
    sess = uuid.uuid4().hex[:16]
    start = sos_start(sess)
    late = dataclasses.replace(start, time=start.time - timedelta(seconds=60))
    await dev.outbox.add(late)
    for odd in (7, "0", None, -1):
        await dev.outbox.add(sos_ack(sess, contact=odd, by="nobody"))
    await dev.outbox.add(sos_ack(sess, contact=0))
    mails = await relay.wait(lambda: world.smtp.mails)
    posts = await relay.wait(lambda: world.hook.posts)
    alice, bob = await relay.links()
    (mail,) = mails
    assert mail.subject == "SOS: Sam's live route (you have acknowledged)"
    assert alice in mail.body and "needs help" not in mail.body
    assert posts[0][1]["title"] == "SOS: Sam needs help" and bob in posts[0][1]["message"]
    token = alice.rsplit("/", 1)[1]
    data = (await relay.http.get(f"/s/{token}/data")).json()
    assert [c["name"] for c in data["confirmed"]] == ["Alice"]
    receipt = await relay.store.receipt("dev1", link_base="")
    assert [bool(c["acked"]) for c in receipt["contacts"]] == [True, False]
    await asyncio.sleep(1.0)
    assert len(world.smtp.mails) == 1  # and no alert after it


async def test_a_start_on_time_is_alerted_at_once_a_late_one_after_the_hold(
    tmp_path: Path,
) -> None:
    """The hold applies to a backlog only: an SOS start that arrives as it is made is
    claimed for sending at once; one recorded a minute earlier, ``backlog_hold`` later."""
    from sosbeacon.device.wire import Received
    from sosbeacon.relay.cli import open_store

    cfg = relay_settings(tmp_path, 1, **{"notify.backlog_hold": 5})
    store = open_store(cfg)
    await store.create()
    try:
        now = 1_000_000.0

        def start(sess: str, t: float) -> Received:
            return Received("b" + sess, 1, "sos-start", t, {"contacts": CONTACTS}, sess, False)

        await store.ingest("dev1", [start("s1", now - 1)], now=now)
        await store.ingest("dev1", [start("s2", now - 60)], now=now)
        due = await store.claim_due(now=now, me="t", lease=30)
        assert {d["name"] for d in due} == {"Alice", "Bob"} and len(due) == 2
        assert await store.claim_due(now=now + 4.9, me="t", lease=30) == []
        held = await store.claim_due(now=now + 5, me="t", lease=30)
        assert len(held) == 2 and {d["sid"] for d in held} != {d["sid"] for d in due}
    finally:
        await store.close()


async def test_a_relay_killed_mid_send_takes_its_claims_back_and_no_end_precedes_an_alert(
    tmp_path: Path,
) -> None:
    """Relay "a" claims the alerts and dies before sending them. The end that arrives
    next waits: no contact hears that an SOS ended before hearing that it started. Another
    relay sends nothing of it until the lease is over; "a" started again takes its claims
    back at once; the ends follow the alerts."""
    from sosbeacon.device.wire import Received
    from sosbeacon.relay.cli import open_store

    store = open_store(relay_settings(tmp_path, 1))
    await store.create()
    try:
        now = 1_000_000.0
        start = Received("b1", 1, "sos-start", now, {"contacts": CONTACTS}, "s1", False)
        await store.ingest("dev1", [start], now=now)
        alerts = await store.claim_due(now=now, me="a", lease=90)
        assert [d["kind"] for d in alerts] == ["start", "start"]
        end = Received("b1", 2, "sos-end", now + 1, {"reason": "cli"}, "s1", False, now + H72)
        await store.ingest("dev1", [end], now=now + 1)
        assert await store.claim_due(now=now + 2, me="b", lease=90) == []  # a's, and after them
        assert await store.take_back("b", now=now + 2) == 0  # b holds none of them
        assert await store.take_back("a", now=now + 3) == 2
        again = await store.claim_due(now=now + 3, me="a", lease=90)
        assert [d["id"] for d in again] == [d["id"] for d in alerts]  # the ends still wait
        await store.sent(again[0]["id"], now=now + 4)
        (end_1,) = await store.claim_due(now=now + 4, me="b", lease=90)
        assert end_1["kind"] == "end" and end_1["name"] == again[0]["name"]
        await store.failed(again[1]["id"], "refused", retry_at=None)  # gone for good
        (end_2,) = await store.claim_due(now=now + 5, me="b", lease=90)
        assert end_2["kind"] == "end" and end_2["name"] == again[1]["name"]
    finally:
        await store.close()


async def test_an_sos_overtakes_a_backlog_queued_at_the_broker_for_the_relay(
    tmp_path: Path,
) -> None:
    """While the relay is away, a device drains a long backlog to the broker, then starts
    an SOS. Once the relay is back, the SOS is stored before the backlog is: SOS events
    have a connection, and so a broker queue, of their own."""
    from sqlalchemy import create_engine, func, select

    from sosbeacon.device.uplink import UplinkConfig
    from sosbeacon.relay import db

    backlog = 40_000  # 80 messages of 500: several of the relay's transactions
    up = UplinkConfig(device_id="dev1", batch_count=1, backoff_max=2.0, relay_window=0)
    async with rig(tmp_path, config=up, start=False) as dev:
        cfg = relay_settings(tmp_path, dev.broker.port)
        async with relay_rig(cfg):
            pass  # its sessions now exist at the broker and keep what comes while it is away
        for first in range(0, backlog, 500):
            await asyncio.gather(*(dev.outbox.store(fix_record(i, session="s-old",
                                                               priority=Priority.ROUTINE))
                                   for i in range(first, first + 500)))  # fmt: skip
        dev.start_uplink()
        await asyncio.wait_for(dev.uplink.drained(), 60)  # all of it queued at the broker
        await dev.outbox.add(sos_start("s-new"))
        await asyncio.wait_for(dev.uplink.drained(), 10)

        async with relay_rig(cfg) as relay:

            async def done() -> bool:
                page = await relay.http.get("/healthz")
                return page.status_code == 200 and relay.relay.counters.records >= backlog + 1

            await eventually(done, within=60)
        eng = create_engine(f"sqlite:///{cfg.relay.data_dir / 'relay.db'}")
        try:
            with eng.connect() as conn:
                s = db.sessions.c
                start_stored = conn.execute(select(s.stored_at).where(s.sess == "s-new")).scalar()
                old = select(s.id).where(s.sess == "s-old").scalar_subquery()
                r = db.records.c
                last_of_backlog = conn.execute(
                    select(func.max(r.received)).where(r.session_id == old)
                ).scalar()
                count = conn.execute(select(func.count()).where(r.session_id == old)).scalar()
        finally:
            eng.dispose()
        assert count == backlog
        assert start_stored is not None and last_of_backlog is not None
        assert start_stored < last_of_backlog, (start_stored, last_of_backlog)


async def test_a_slow_service_never_holds_up_the_alert_of_the_next_sos(tmp_path: Path) -> None:
    """Bob's messenger takes 3 s to answer each post (within Apprise's own 4 s).
    Alice's e-mail alert of a second SOS, which arrives while Bob's first alert is still
    being sent, goes at once: each send is a task of its own, and the next due are
    claimed beside it (before, the relay waited for the whole batch, the slowest send
    included)."""
    with MailSink() as smtp, HttpSink() as hook:
        hook.delay = 3.0
        async with rig(tmp_path) as dev:
            cfg = relay_settings(
                tmp_path, dev.broker.port,
                **{"notify.services": {"email": smtp.url(), "json": hook.url()}},
            )  # fmt: skip
            async with relay_rig(cfg) as relay:
                first, second = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
                await dev.outbox.add(sos_start(first, contacts=CONTACTS))
                await relay.wait(lambda: len(smtp.mails) == 1 and len(hook.posts) == 1)
                t0 = time.monotonic()
                await dev.outbox.add(sos_start(second, contacts=CONTACTS[:1]))
                await relay.wait(lambda: len(smtp.mails) == 2, within=10)
                took = time.monotonic() - t0
                assert hook.answered == 0, "Bob's first post is still being answered"
                assert took < 2.5, f"the second SOS's alert waited {took:.1f} s"
                await relay.wait(lambda: hook.answered == 1, within=15)
                await asyncio.sleep(1.0)
                assert len(hook.posts) == 1  # sent once, however slow
