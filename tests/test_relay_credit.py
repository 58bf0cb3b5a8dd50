"""End-to-end backpressure (device/uplink/credit.py): once a relay's receipt has come,
the device sends no more than a window of records the relay has not confirmed; the rest
wait in the outbox, SOS events never do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.device.uplink.credit import RelayCredit
from sosbeacon.device.wire import parse_ranges_text, seq_ranges_text
from tests.helpers import eventually
from tests.mqtt_env import T0, fix_record, rig


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


def receipt(box: str, stored: str) -> dict[str, object]:
    return {"v": 1, "stored": {box: stored}}


def test_the_window_counts_messages_the_receipts_do_not_name_whole() -> None:
    clock = Clock()
    c = RelayCredit(routine=3, live=2, patience=60, stall=3, clock=clock)  # type: ignore[arg-type]
    c.sent([1, 2, 3, 4], live=False)
    assert c.has_room(live=False) and not c.engaged  # no relay yet: nothing is held
    c.receipt("box", receipt("other-box", "1-9"))  # ... someone else's outbox
    assert not c.engaged and c.room(live=False) is None
    c.receipt("box", receipt("box", "1-4"))
    assert c.engaged and c.unconfirmed(live=False) == 0
    c.sent([5, 6], live=False)  # one message of two records
    c.sent([7], live=True)
    assert c.room(live=False) == 2 and c.room(live=True) == 1
    c.sent([8, 9], live=False)
    c.sent([10], live=False)
    assert c.unconfirmed(live=False) == 3 and not c.has_room(live=False)
    c.sent([10, 11], live=False)  # 10 went again (a reconnect), with 11: still three
    assert c.unconfirmed(live=False) == 3
    c.receipt("box", receipt("box", "1-5,8-11"))  # half of the first message: it stays
    assert c.unconfirmed(live=False) == 1 and c.unconfirmed(live=True) == 1
    c.receipt("box", receipt("box", "1-3-"))  # malformed: ignored, nothing changes
    assert c.unconfirmed(live=False) == 1
    # the relay never names 6 and 7: once the patience is over, at a receipt, they leave
    # the window and are due to go again, once
    clock.t += 61
    c.sent([12], live=True)
    c.receipt("box", receipt("box", "1-5,8-11"))
    assert c.unconfirmed(live=False) == 0 and c.unconfirmed(live=True) == 1
    assert c.due() == [6, 7] and c.due() == []
    c.sent_again([6, 7], held=1)  # the outbox still had 7 (an SOS session's): it goes again
    assert c.status() == {
        "engaged": True, "routine": 0, "live": 1, "stranded": 0, "given_up": 1, "resent": 1
    }  # fmt: skip
    c.sent([7], live=True)
    clock.t += 61
    c.receipt("box", receipt("box", "1-5,8-12"))  # 7 is still not stored: given up for good
    assert c.due() == [] and c.given_up == 2 and c.unconfirmed(live=True) == 0


def test_a_message_passed_over_leaves_the_window_and_an_in_order_relay_holds_it() -> None:
    """With two relays on a shared subscription, a message the receipts pass over (later
    ones named, not it) went to a relay that is down: after ``stall`` it stops holding
    the window. A relay that stores in order passes nothing over, so its backlog holds
    the window until it catches up."""
    clock = Clock()
    c = RelayCredit(routine=3, live=1, patience=600, clock=clock, stall=5)  # type: ignore[arg-type]
    c.receipt("box", receipt("box", "1"))
    c.sent([2], live=False)
    c.sent([3], live=False)
    c.sent([4], live=False)
    c.receipt("box", receipt("box", "1,3"))  # 3 is stored, 2 (sent before it) is not
    c.sent([5], live=False)
    assert not c.has_room(live=False) and c.next_stall() == 5
    clock.t += 4
    assert not c.has_room(live=False) and c.next_stall() == 1
    clock.t += 1
    assert c.room(live=False) == 1 and c.next_stall() is None  # 4 and 5: not passed over
    assert c.status()["stranded"] == 1 and c.status()["routine"] == 2
    # the relay that had 2 is back: it is confirmed, nothing is counted twice
    c.receipt("box", receipt("box", "1-3"))
    assert c.status() == {
        "engaged": True, "routine": 2, "live": 0, "stranded": 0, "given_up": 0, "resent": 0
    }  # fmt: skip
    # one relay, in order: 4 and 5 wait for it however long it takes (within patience)
    clock.t += 100
    c.receipt("box", receipt("box", "1-3"))
    assert c.room(live=False) == 1 and c.status()["stranded"] == 0
    c.receipt("box", receipt("box", "1-5"))
    assert c.room(live=False) == 3
    # a stranded message the relay never names is given up on after the patience
    c.sent([6], live=True)
    c.sent([7], live=False)
    c.receipt("box", receipt("box", "1-5,7"))
    clock.t += 5
    assert c.has_room(live=True) and c.status()["stranded"] == 1
    clock.t += 600
    c.receipt("box", receipt("box", "1-5,7"))
    assert c.due() == [6]
    c.sent_again([6], held=0)
    assert c.status() == {
        "engaged": True, "routine": 0, "live": 0, "stranded": 0, "given_up": 1, "resent": 0
    }  # fmt: skip


def test_windows_of_zero_never_hold_anything_back() -> None:
    c = RelayCredit(routine=0, live=0, patience=60, stall=3, clock=Clock())  # type: ignore[arg-type]
    c.receipt("box", receipt("box", "1-4"))
    c.sent(range(5, 10_000), live=False)
    assert not c.engaged and c.has_room(live=False) and c.has_room(live=True)
    assert c.room(live=False) is None


def test_ranges_text_round_trips() -> None:
    assert parse_ranges_text("3-7,9") == [(3, 7), (9, 9)]
    assert parse_ranges_text("") == []
    for bad in ("7-3", "a", "1-", "-1", "1,,2"):
        try:
            parse_ranges_text(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken")


def routine(i: int) -> Record:
    return fix_record(i, priority=Priority.ROUTINE)


async def test_a_relay_behind_holds_the_backlog_in_the_outbox_and_sos_events_overtake(
    tmp_path: Path,
) -> None:
    cfg = UplinkConfig(
        device_id="dev1", batch_count=1, batch_interval=0, max_batch=1, backoff_max=2.0,
        relay_window=4, relay_window_live=2, relay_patience=3600,  # messages
    )  # fmt: skip
    async with rig(tmp_path, config=cfg) as r:
        box = r.outbox.outbox_id
        relay = Connection(BrokerConfig(host="127.0.0.1", port=r.broker.port, client_id="relay"))
        await relay.connect()
        try:

            async def confirm(stored: str) -> None:
                topic = r.uplink.topics.receipt
                await relay.publish(topic, json.dumps(receipt(box, stored)).encode(), retain=True)
                await eventually(lambda: r.uplink.credit.engaged, within=10)

            def got() -> set[int]:
                return {x.seq for x in r.receiver.records}

            for i in range(3):  # no relay has answered yet: nothing is held back
                await r.outbox.store(routine(i))
            await r.receiver.wait_for_seqs(3)
            await confirm("1-3")

            for i in range(3, 13):  # seqs 4..13, one a message: four may be unconfirmed
                await r.outbox.store(routine(i))
            await r.receiver.wait_until(lambda: {4, 5, 6, 7} <= got())
            await asyncio.sleep(1.0)  # time enough for more to go, if any would
            assert max(got()) == 7
            status = (await r.outbox.stats()).depth
            assert status == 6  # the backlog is in the outbox, not at the broker

            # an SOS start overtakes the held backlog; live positions go up to their window
            start = Record(
                kind=RecordKind.SOS_START, time=T0, data={"trigger": "test"},
                priority=Priority.SOS, session="s1",
            )  # fmt: skip
            await r.outbox.store(start)  # seq 14
            for i in range(3):  # seqs 15..17: two may go
                await r.outbox.store(fix_record(20 + i, session="s1"))
            await r.receiver.wait_until(lambda: {14, 15, 16} <= got())
            await asyncio.sleep(1.0)
            assert 17 not in got() and max(s for s in got() if s < 14) == 7
            assert r.uplink.credit.status()["live"] == 2

            # the relay catches up, a receipt after what it stored: everything held goes,
            # nothing is lost or doubled
            async def relay_keeps_up() -> None:
                while True:
                    await confirm(seq_ranges_text(got()))
                    await asyncio.sleep(0.1)

            keeping_up = asyncio.create_task(relay_keeps_up())
            try:
                led = await r.receiver.wait_for_seqs(17)
            finally:
                keeping_up.cancel()
            assert led.missing() == [] and led.duplicates == 0
            await asyncio.wait_for(r.uplink.drained(), 10)  # and the outbox is empty
        finally:
            relay.close()


async def test_session_records_the_relay_never_stored_go_once_more(tmp_path: Path) -> None:
    """The broker took them, the relay's receipts never name them (a queue past its
    bound, a relay that failed over): after the patience, an SOS session's records,
    still kept on the device, are sent once more; a routine record, gone from the
    outbox at the broker's acknowledgement, is given up on; neither goes a third time."""
    cfg = UplinkConfig(
        device_id="dev1", batch_count=1, batch_interval=0, max_batch=1, backoff_max=2.0,
        relay_window=8, relay_window_live=8, relay_patience=1.0,
    )  # fmt: skip
    async with rig(tmp_path, config=cfg) as r:
        box = r.outbox.outbox_id
        relay = Connection(BrokerConfig(host="127.0.0.1", port=r.broker.port, client_id="relay"))
        await relay.connect()
        stored = "1"

        async def receipts() -> None:  # the relay answers every 0.2 s with what it has
            while True:
                payload = json.dumps(receipt(box, stored)).encode()
                await relay.publish(r.uplink.topics.receipt, payload, retain=True)
                await asyncio.sleep(0.2)

        answering = asyncio.create_task(receipts())
        try:
            await eventually(lambda: r.uplink.credit.engaged, within=10)
            start = Record(
                kind=RecordKind.SOS_START, time=T0, data={"trigger": "test"},
                priority=Priority.SOS, session="s1",
            )  # fmt: skip
            await r.outbox.store(start)  # 1
            for i in range(3):
                await r.outbox.store(fix_record(i, session="s1"))  # 2-4
            await r.outbox.store(routine(9))  # 5
            await r.receiver.wait_for_seqs(5)
            stored = "1-2,4"  # 3 (a live position) and 5 (routine) never reach the relay
            await eventually(lambda: r.uplink.credit.status()["resent"] == 1, within=10)
            await r.receiver.wait_until(lambda: r.receiver.ledger().duplicates == 1)
            assert r.uplink.credit.status()["given_up"] == 1  # 5: no longer on the device
            stored = "1-4"  # the second sending of 3 is stored
            await asyncio.sleep(2.5)  # past the patience again
            status = r.uplink.credit.status()
            assert status["resent"] == 1 and status["given_up"] == 1
            assert r.receiver.ledger().duplicates == 1  # nothing went a third time
            assert r.uplink.credit.unconfirmed(live=True) == 0
        finally:
            answering.cancel()
            relay.close()
