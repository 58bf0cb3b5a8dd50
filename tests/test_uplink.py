"""The MQTT v5 uplink against a real Mosquitto: what the contacts receive, in what form,
with what properties; commands; the retained views."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.commands import CommandDesk, SosCommands
from sosbeacon.device.gps import Fix, FixMode
from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.outbox import Limits
from sosbeacon.device.outbox.testing import Probe
from sosbeacon.device.privacy import PrivacyConfig
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.device.uplink import UplinkConfig, sos_message_id
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.netfault import FaultProxy
from sosbeacon.sim.receiver import Receiver
from tests.mqtt_env import RECEIVER_OFFSETS, T0, fix_record, need_mosquitto, rig


async def test_a_publish_is_on_the_wire_before_the_event_loop_runs_again(
    tmp_path: Path,
) -> None:
    """An SOS must not wait for the loop to get round to the socket: ``publish`` writes
    the packet itself. Shown with the loop blocked after the publish: a subscriber in a
    thread of its own still gets the message."""
    with Mosquitto(tmp_path, binary=need_mosquitto()) as broker:
        got = threading.Event()
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="thread-sub")
        subscribed = threading.Event()
        sub.on_connect = lambda c, *_: c.subscribe("t/sos", qos=1)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_message = lambda *_: got.set()
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        pub = Connection(BrokerConfig(host="127.0.0.1", port=broker.port, client_id="pub"))
        try:
            await pub.connect(clean_start=True)
            assert await asyncio.to_thread(subscribed.wait, 10)
            fut = pub.publish("t/sos", b'{"kind":"sos-start"}')
            # the loop does not run while this waits (a blocking wait, on purpose)
            assert got.wait(5), "the message left only when the loop ran again"
            assert not (await asyncio.wait_for(fut, 5)).is_failure
        finally:
            pub.close()
            sub.loop_stop()
            sub.disconnect()


async def test_records_arrive_once_with_ids_and_leave_the_outbox(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        stored = [await r.outbox.store(fix_record(i, session="s1")) for i in range(5)]
        led = await r.receiver.wait_for_seqs(5)
        assert led.missing() == [] and led.duplicates == 0
        got = {x.seq: x for x in r.receiver.records}
        for s in stored:
            fix = s.record.data["fix"]
            assert got[s.seq].data["fix"]["lat"] == pytest.approx(fix["lat"], abs=1e-6)
            assert got[s.seq].data["fix"]["lon"] == pytest.approx(fix["lon"], abs=1e-6)
            assert got[s.seq].session == "s1"
        async with asyncio.timeout(10):
            await r.uplink.drained()  # acknowledged, so deleted
        track = [d for d in r.receiver.history if d.topic.endswith("/track")]
        props = dict(track[0].user_properties)
        assert len(props["msg_id"]) == 20 and props["seq"].split("-")[0].isdigit()
        status = r.receiver.json(r.uplink.topics.status)
        assert status["state"] == "online" and status["box"] == r.outbox.outbox_id


def controller(box: object, **kw: object) -> SosController:
    return SosController(
        config=SosConfig(contacts=(Contact("Alice"),), countdown=0),
        recorder=box,  # type: ignore[arg-type]
        clock=MonotonicClock(),
        **kw,  # type: ignore[arg-type]
    )


def a_fix(i: int) -> Fix:
    return Fix(
        time=datetime.now(UTC),
        lat=55.944 + i * 0.001,
        lon=-3.161,
        mode=FixMode.THREE_D,
        speed=1.2,
        received=time.monotonic(),
    )


async def test_an_sos_reaches_the_contacts_with_its_route_and_retained_views(
    tmp_path: Path, shared_dir: Path
) -> None:
    schema = json.loads((shared_dir / "owntracks-schema" / "message.json").read_text())
    async with rig(tmp_path) as r:
        ctl = controller(r.outbox)
        await ctl.on_fix(a_fix(0))
        await ctl.start(trigger="cli", now=True)
        assert ctl.session is not None
        sid = ctl.session.id
        topics = r.uplink.topics
        await r.receiver.wait_until(lambda: (r.receiver.json(topics.sos) or {}).get("seq") == 1)
        start = r.receiver.latest[topics.sos]
        assert start.expiry is None  # active: the end (and so the expiry) is not known yet
        # an SOS record is alone in its message, whose id follows from the record: the
        # same at every resend, with nothing stored first
        assert dict(start.user_properties)["msg_id"] == sos_message_id(r.outbox.outbox_id, 1)
        for i in range(1, 4):
            ctl.session.last_point_at = None  # every fix is due
            await ctl.on_fix(a_fix(i))
        await r.receiver.wait_for_seqs(4)
        ot_topic = r.uplink.owntracks_topic
        await r.receiver.wait_until(
            lambda: (r.receiver.json(ot_topic) or {}).get("lat") == pytest.approx(55.947)
        )
        ot = r.receiver.json(ot_topic)
        jsonschema.Draft202012Validator(schema).validate(ot)
        assert ot["lat"] == pytest.approx(55.947) and ot["tag"] == "SOS"
        await ctl.stop(trigger="cli")
        await r.receiver.wait_for_seqs(5)
        end = r.receiver.latest[topics.sos]
        assert json.loads(end.payload)["kind"] == "sos-end"
        assert end.expiry is not None and 72 * 3600 - 60 < end.expiry <= 72 * 3600
        # sharing stops at once: OwnTracks is told by a transition, and the retained
        # position is withdrawn (the route stays with the relay for its 72 hours)
        await r.receiver.wait_until(lambda: r.receiver.latest[ot_topic].payload == b"")
        event = r.receiver.json(f"{ot_topic}/event")
        assert event["_type"] == "transition" and event["desc"] == "SOS ended"
        jsonschema.Draft202012Validator(schema).validate(event)
        assert [x.kind for x in sorted(r.receiver.records, key=lambda x: x.seq)] == [
            "sos-start",
            "fix",
            "fix",
            "fix",
            "sos-end",
        ]
        assert {x.session for x in r.receiver.records} == {sid}
        # a contact subscribing later sees the retained state: the SOS has ended
        late = Receiver(
            BrokerConfig(host="127.0.0.1", port=r.broker.port, client_id="late"), topics
        )
        await late.start()
        await late.wait_until(lambda: topics.sos in late.latest and topics.status in late.latest)
        assert late.json(topics.sos)["kind"] == "sos-end"
        assert late.json(topics.status)["state"] == "online"
        await late.close()


@pytest.mark.parametrize("receiver", list(RECEIVER_OFFSETS))
async def test_routine_records_wait_for_a_batch_while_sos_records_go_at_once(
    tmp_path: Path, receiver: str
) -> None:
    """Batching keys on when the outbox committed the records, by the device's clock:
    a receiver 1024 weeks behind (its records would all look overdue) or 20 years
    ahead (never due) changes nothing."""
    off = RECEIVER_OFFSETS[receiver]
    cfg = UplinkConfig(device_id="dev1", batch_count=50, batch_interval=3600, max_batch=500)
    async with rig(tmp_path, config=cfg, start=False) as r:
        # a backlog built up while offline drains in large batches
        for i in range(1200):
            await r.outbox.store(fix_record(i, priority=Priority.ROUTINE, receiver_offset=off))
        r.start_uplink()
        led = await r.receiver.wait_for_seqs(1200)
        assert led.missing() == [] and led.duplicates == 0
        track = [d for d in r.receiver.history if d.topic == r.uplink.topics.track]
        assert len(track) <= 5, len(track)
        assert all(d.expiry is not None and d.expiry > 6 * 86400 for d in track)
        # idle: fewer than batch_count routine records wait ...
        for i in range(49):
            await r.outbox.store(
                fix_record(2000 + i, priority=Priority.ROUTINE, receiver_offset=off)
            )
        sos = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")
        sos_seq = (await r.outbox.store(sos)).seq
        # ... while an SOS record goes at once
        await r.receiver.wait_until(lambda: any(x.seq == sos_seq for x in r.receiver.records))
        assert r.receiver.ledger().last == sos_seq and len(r.receiver.ledger().missing()) == 49
        # the 50th
        await r.outbox.store(fix_record(3000, priority=Priority.ROUTINE, receiver_offset=off))
        led = await r.receiver.wait_for_seqs(sos_seq + 1)
        assert led.missing() == []


@pytest.mark.parametrize("receiver", list(RECEIVER_OFFSETS))
async def test_a_few_routine_records_go_once_the_oldest_has_waited_batch_interval(
    tmp_path: Path, receiver: str
) -> None:
    """Fewer than ``batch_count``: they go ``batch_interval`` after the first was
    committed, whatever the receiver's date (20 years ahead, they would never go if the
    age were taken from the fix)."""
    off = RECEIVER_OFFSETS[receiver]
    cfg = UplinkConfig(device_id="dev1", batch_count=1000, batch_interval=1.0)
    async with rig(tmp_path, config=cfg) as r:
        await r.uplink.connected.wait()
        for i in range(3):
            await r.outbox.store(fix_record(i, priority=Priority.ROUTINE, receiver_offset=off))
        led = await r.receiver.wait_for_seqs(3)
        assert led.missing() == [] and led.duplicates == 0
        track = [d for d in r.receiver.history if d.topic == r.uplink.topics.track]
        assert len(track) == 1  # one batch, not one message each
        # the fixes keep their receiver's own time
        got = sorted(r.receiver.records, key=lambda x: x.seq)
        assert got[0].t == pytest.approx((T0 + off).timestamp())


async def test_commands_are_validated_applied_and_answered(tmp_path: Path) -> None:
    async with rig(tmp_path, start=False) as r:
        ctl = controller(r.outbox, privacy=PrivacyConfig())
        r.uplink.commands = CommandDesk(SosCommands(ctl), r.uplink.events)
        r.start_uplink()
        await r.uplink.connected.wait()
        asker = Connection(BrokerConfig(host="127.0.0.1", port=r.broker.port, client_id="asker"))
        await asker.connect()
        await asker.subscribe("reply/#")
        cmd = r.uplink.topics.cmd

        async def ask(payload: bytes, *, retain: bool = False) -> dict[str, object]:
            corr = os.urandom(4)
            await asker.publish(
                cmd, payload, retain=retain, response_topic="reply/alice", correlation=corr
            )
            while True:
                m = await asyncio.wait_for(asker.messages.get(), 10)
                asker.ack(m)
                if m.correlation == corr:
                    return json.loads(m.payload)  # type: ignore[no-any-return]

        got = await ask(b'{"cmd":"ack","id":"c1"}')
        assert got["ok"] is False and "no SOS is active" in str(got["error"])
        got = await ask(b'{"cmd":"locate-now"}')
        assert got["ok"] is False and "track_outside_sos" in str(got["error"])
        got = await ask(b'{"cmd":"drill","id":"c2"}')
        assert got["ok"] is True and got["drill"] is True
        assert ctl.session is not None and ctl.session.drill
        got = await ask(b'{"cmd":"drill","id":"c2"}')  # a redelivery is answered, not re-run
        assert got["ok"] is True
        await ctl.on_fix(a_fix(1))
        got = await ask(b'{"cmd":"locate-now","id":"c3"}')
        assert got["ok"] is True and got["fix_age"] is not None
        got = await ask(b'{"cmd":"ack","id":"c4","by":"Alice","session":"not-this-one"}')
        assert got["ok"] is False and "not the active SOS" in str(got["error"])
        got = await ask(b'{"cmd":"ack","id":"c5","by":"Alice"}')
        assert got == {"id": "c5", "cmd": "ack", "ok": True, "session": ctl.session.id}
        for bad, why in (
            (b"garbage", "not JSON"),
            (b'{"cmd":"reboot"}', "unknown command"),
            (b'{"cmd":"cancel","now":true}', "unknown field"),
        ):
            got = await ask(bad)
            assert got["ok"] is False and why in str(got["error"])
        got = await ask(b'{"cmd":"cancel"}', retain=True)
        assert got["ok"] is False and "retained" in str(got["error"])
        assert ctl.session is not None  # the retained cancel did nothing
        got = await ask(b'{"cmd":"cancel","id":"c6","by":"Alice"}')
        assert got["ok"] is True and ctl.session is None
        await asker.publish(cmd, b"", retain=True)  # clear the retained command
        await r.receiver.wait_until(
            lambda: {x.kind for x in r.receiver.records} >= {"sos-start", "sos-ack", "sos-end"}
        )
        acks = [x for x in r.receiver.records if x.kind == "sos-ack"]
        assert acks[0].data == {"by": "Alice"} and acks[0].drill
        assert r.uplink.stats.commands_rejected >= 7
        assert r.task is not None and not r.task.done()  # none of it hurt the daemon
        asker.close()


async def test_evicted_records_are_announced_so_receivers_see_thinning_not_loss(
    tmp_path: Path,
) -> None:
    limits = Limits(max_rows=100, min_free_bytes=0)
    async with rig(tmp_path, start=False, limits=limits) as r:
        sos = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")
        await r.outbox.store(sos)
        for i in range(400):  # offline for a long time: routine telemetry piles up
            await r.outbox.store(fix_record(i, priority=Priority.ROUTINE))
        last = (await r.outbox.store(fix_record(999, session="s1"))).seq
        r.start_uplink()
        led = await r.receiver.wait_for_seqs(last)
        assert led.missing() == []  # every seq arrived or was announced as removed
        assert len(led.removed) >= 250  # the oldest routine ones were thinned ...
        assert 1 in led.seen and last in led.seen  # ... never the SOS ones
        gap = next(x for x in r.receiver.records if x.kind == "gap")
        assert gap.data["reason"] == "evicted"


async def test_status_says_offline_when_the_link_drops_and_on_shutdown(tmp_path: Path) -> None:
    async with rig(tmp_path, start=False) as r, FaultProxy(target_port=r.broker.port) as proxy:
        r.uplink.broker = BrokerConfig(host="127.0.0.1", port=proxy.port, client_id="dev1")
        status = r.uplink.topics.status

        def states() -> list[tuple[str, str | None]]:
            out = []
            for d in r.receiver.history:
                if d.topic == status:
                    msg = json.loads(d.payload)
                    out.append((msg["state"], msg.get("why")))
            return out

        r.start_uplink()
        await r.receiver.wait_until(lambda: states()[-1:] == [("online", None)])
        proxy.reset()  # the link dies without a goodbye: the broker publishes the will
        await r.receiver.wait_until(lambda: ("offline", "connection lost") in states())
        await r.receiver.wait_until(lambda: states()[-1] == ("online", None))  # back
        await r.stop_uplink()  # a clean shutdown says so itself
        await r.receiver.wait_until(lambda: states()[-1] == ("offline", "shutdown"))
        assert r.receiver.latest[status].retain


async def test_an_owntracks_consumer_stores_each_fix_once_the_first_at_the_start(
    tmp_path: Path,
) -> None:
    """What a Recorder subscribed to ``owntracks/#`` stores over one SOS: one location
    per distinct fix, the first the SOS start's own fix, at once; the end is a
    transition, never a second copy of a point under the same ``tst``."""
    async with rig(tmp_path) as r:
        ctl = controller(r.outbox)
        await ctl.on_fix(a_fix(0))
        await ctl.start(trigger="cli", now=True)
        ot = r.uplink.owntracks_topic
        await r.receiver.wait_until(lambda: ot in r.receiver.latest)
        assert ctl.session is not None
        first = r.receiver.json(ot)
        assert first["lat"] == pytest.approx(55.944) and first["tag"] == "SOS"
        for i in range(1, 4):
            ctl.session.last_point_at = None
            await asyncio.sleep(1.1)  # distinct fix times (tst is in whole seconds)
            await ctl.on_fix(a_fix(i))
            await r.receiver.wait_until(
                lambda i=i: (
                    (r.receiver.json(ot) or {}).get("lat") == pytest.approx(55.944 + i * 0.001)
                )
            )
        await ctl.stop(trigger="cli")
        await r.receiver.wait_until(lambda: r.receiver.latest[ot].payload == b"")
        stored = [json.loads(d.payload) for d in r.receiver.history if d.topic == ot and d.payload]
        assert all(m["_type"] == "location" for m in stored)
        tsts = [m["tst"] for m in stored]
        assert len(tsts) == len(set(tsts)) == 4  # each fix once: the start's and three more
        assert stored[0]["lat"] == pytest.approx(55.944)
        events = [d for d in r.receiver.history if d.topic == f"{ot}/event"]
        end = json.loads(events[0].payload)
        assert len(events) == 1 and end["_type"] == "transition" and end["tst"] >= max(tsts)


async def test_while_an_sos_record_is_on_its_way_the_backlog_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right of way (device/outbox/rightofway.py): from the moment an SOS record is
    handed to the outbox until it was published, a draining backlog publishes no track
    message; then it drains on, nothing lost. The SOS record's commit is made slow (a
    slow card), and the hold long: on a slow machine its 50 ms would end first, which is
    the design, not what is tested."""
    published: list[tuple[str, float]] = []
    draining = asyncio.Event()
    real_publish = Connection.publish

    def spy(self: Connection, topic: str, *args: Any, **kw: Any) -> Any:
        published.append((topic, time.perf_counter()))
        if sum(t.endswith("/track") for t, _ in published) >= 5:
            draining.set()
        return real_publish(self, topic, *args, **kw)

    monkeypatch.setattr(Connection, "publish", spy)
    cfg = UplinkConfig(device_id="dev1", batch_count=1, max_batch=50)
    n = 20_000
    async with rig(tmp_path, config=cfg, start=False) as r:
        await asyncio.gather(
            *(r.outbox.store(fix_record(i, priority=Priority.ROUTINE)) for i in range(n))
        )
        way = r.outbox.right_of_way
        way.hold = 30.0
        claims: list[float] = []
        real_claim = way.claim

        def claim() -> None:
            claims.append(time.perf_counter())
            real_claim()

        monkeypatch.setattr(way, "claim", claim)
        r.start_uplink()
        track = r.uplink.topics.track
        await asyncio.wait_for(draining.wait(), 30)
        sos = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")

        def slow(real: Callable[[list[Record]], Any]) -> Callable[[list[Record]], Any]:
            def commit(records: list[Record]) -> Any:
                time.sleep(0.3)  # a slow card: the backlog would go on meanwhile
                return real(records)

            return commit

        with Probe(r.outbox).wrap("store", slow):
            await r.outbox.store(sos)
        led = await r.receiver.wait_for_seqs(n + 1)
        assert led.missing() == [] and led.duplicates == 0
    (claimed,) = claims
    sos_at = next(at for t, at in published if t == r.uplink.topics.sos)
    tracks = [at for t, at in published if t == track]
    assert [at for at in tracks if claimed < at < sos_at] == []
    assert tracks[-1] > sos_at, "the backlog was still draining when the SOS went"


async def test_an_idle_connection_wakes_for_its_keepalive_not_every_second(
    tmp_path: Path,
) -> None:
    """paho's housekeeping runs when a ping can be due, not once a second (an idle
    beacon's wake-ups: docs/performance.md, "Power"); the pings still go, so the broker
    (which drops a client silent for 1.5 keepalives) keeps the connection."""
    with Mosquitto(tmp_path, binary=need_mosquitto()) as broker:
        conn = Connection(
            BrokerConfig(host="127.0.0.1", port=broker.port, client_id="idle", keepalive=2)
        )
        await conn.connect(clean_start=True)
        calls = 0
        real = conn._client.loop_misc

        def counting() -> Any:
            nonlocal calls
            calls += 1
            return real()

        conn._client.loop_misc = counting  # type: ignore[method-assign]
        try:
            await asyncio.sleep(7.2)
            assert not conn.closed.done(), "the broker dropped an idle connection: no pings"
            # a ping at about 2, 4 and 6 s (once a second would be 7)
            assert 2 <= calls <= 4, calls
            got = conn.publish("t/after", b"still here")
            assert not (await asyncio.wait_for(got, 5)).is_failure
        finally:
            conn.close()
