"""The right of way an SOS record takes over the routine backlog
(:mod:`device.outbox.rightofway`): held from the claim until the record was stored and
sent, never longer than its hold."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sosbeacon.device.outbox import Outbox
from sosbeacon.device.outbox.rightofway import RightOfWay
from sosbeacon.device.records import Priority, Record, RecordKind, seqs_of


async def _waiting(way: RightOfWay) -> asyncio.Task[None]:
    task = asyncio.create_task(way.wait())
    await asyncio.sleep(0.01)
    return task


async def test_routine_work_waits_until_the_sos_record_is_stored_and_sent() -> None:
    way = RightOfWay(hold=30.0)
    await way.wait()  # free: no wait
    way.claim()
    task = await _waiting(way)
    way.stored()
    await asyncio.sleep(0.01)
    assert way.held and not task.done(), "stored, not yet sent: the backlog still waits"
    way.passed()
    await asyncio.wait_for(task, 1)
    assert not way.held and way.waits == 1 and way.waited > 0


async def test_what_was_sent_frees_nothing_while_another_sos_record_is_being_committed() -> None:
    way = RightOfWay(hold=30.0)
    way.claim()
    way.claim()
    way.stored()
    task = await _waiting(way)
    way.passed()  # the first went; the second is still being committed
    await asyncio.sleep(0.01)
    assert way.held and not task.done()
    way.stored()
    way.passed()
    await asyncio.wait_for(task, 1)


async def test_the_hold_ends_by_itself_counted_from_the_last_claim() -> None:
    """A record that never goes (the link down, a full disk) holds the backlog back for
    ``hold`` seconds after the last claim, then no longer."""
    way = RightOfWay(hold=0.2)
    t0 = time.monotonic()
    way.claim()
    await asyncio.sleep(0.1)
    way.claim()  # a second SOS record: the hold runs from here
    task = await _waiting(way)
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - t0 >= 0.29
    assert not way.held
    way.passed()  # late news of either changes nothing
    way.stored()
    assert not way.held
    way.claim()  # and a claim after that holds again
    assert way.held


async def test_a_thread_waits_while_held_and_never_longer_than_the_hold() -> None:
    way = RightOfWay(hold=30.0)
    t0 = time.monotonic()
    await asyncio.to_thread(way.wait_in_thread)
    assert time.monotonic() - t0 < 1, "free: no wait"
    way.claim()
    done = threading.Event()

    def wait() -> None:
        way.wait_in_thread()
        done.set()

    thread = threading.Thread(target=wait)
    thread.start()
    await asyncio.sleep(0.05)
    assert not done.is_set()
    way.stored()
    way.passed()
    assert await asyncio.to_thread(done.wait, 2)
    thread.join()
    short = RightOfWay(hold=0.1)
    short.claim()
    t0 = time.monotonic()
    await asyncio.to_thread(short.wait_in_thread)  # bounded by the hold itself
    assert 0.09 <= time.monotonic() - t0 < 5


async def test_an_outbox_holds_acknowledgements_back_while_an_sos_record_is_on_its_way(
    tmp_path: Path,
) -> None:
    """The writer thread is the SOS record's next hop: a routine acknowledgement's
    commit waits, and is made once the record went."""
    async with await Outbox.open(tmp_path / "o.db") as box:
        now = datetime.now(UTC)
        await box.store(Record(RecordKind.BATTERY, now, {"pct": 80}))
        seqs = seqs_of(await box.take())
        box.right_of_way.hold = 30.0
        sos = await box.store(Record(RecordKind.SOS_START, now, {}, Priority.SOS, "s1"))
        assert box.right_of_way.held, "stored, not sent yet"
        ack = asyncio.create_task(box.ack(seqs))
        await asyncio.sleep(0.05)
        assert not ack.done()
        assert (await box.stats()).depth == 2
        box.right_of_way.passed()
        await asyncio.wait_for(ack, 5)
        assert (await box.stats()).depth == 1  # the SOS record alone waits
        assert await box.last_seq() == sos.seq
