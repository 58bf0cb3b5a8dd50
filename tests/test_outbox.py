"""The durable outbox: gap-free seq, durability across reopen, priority order,
ack-then-delete, eviction of routine records only, full disk, corrupt file, expiry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device.outbox import SCHEMA_VERSION, Limits, Outbox, OutboxError, OutboxFull
from sosbeacon.device.outbox.testing import Probe
from sosbeacon.device.records import Priority, Record, RecordKind, Stored

T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)


def rec(
    i: int = 0,
    *,
    priority: Priority = Priority.ROUTINE,
    session: str | None = None,
    kind: RecordKind = RecordKind.FIX,
    size: int = 0,
) -> Record:
    return Record(
        kind=kind,
        time=T0 + timedelta(seconds=i),
        priority=priority,
        session=session,
        data={"i": i, "pad": "x" * size},
    )


async def test_seq_is_gap_free_and_commits_are_grouped(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        stored = await asyncio.gather(*(box.store(rec(i)) for i in range(300)))
        seqs = sorted(s.seq for s in stored)
        assert seqs == list(range(1, 301))
        assert all(s.msg_id is None for s in stored)  # messages are formed when sent
        assert box.commits < 300  # group commit: far fewer fsyncs than records


async def test_survives_reopen_and_never_reuses_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        for i in range(5):
            await box.store(rec(i))
        taken = await box.take(3)
        await box.ack([s.seq for s in taken])
        ident = box.outbox_id
    async with await Outbox.open(path) as box:
        assert box.outbox_id == ident
        assert [s.seq for s in await box.take()] == [4, 5]
        await box.ack([4, 5])
        assert (await box.store(rec(9))).seq == 6  # not 1: numbers are never reused


async def test_priority_order_inflight_and_requeue(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        await box.store(rec(1))
        await box.store(rec(2, priority=Priority.LIVE))
        await box.store(rec(3, priority=Priority.SOS, kind=RecordKind.SOS_START))
        await box.store(rec(4))
        first = await box.take(2)
        assert [s.seq for s in first] == [3, 2]
        assert [s.seq for s in await box.take()] == [1, 4]  # in-flight ones are not re-taken
        assert await box.take() == []
        await box.bind({"m-1": [3]})  # the uplink names the message before sending it
        await box.requeue([3])  # e.g. PUBACK with a failure reason code
        again = await box.take()
        assert [s.seq for s in again] == [3]
        assert again[0].msg_id == "m-1"  # resent with the same message id
        await box.requeue()  # reconnect: everything in flight goes back
        assert (await box.stats()).inflight == 0
        assert [s.seq for s in await box.take()] == [3, 2, 1, 4]


async def test_in_flight_records_return_to_pending_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        await box.store(rec(1))
        assert len(await box.take()) == 1
    async with await Outbox.open(path) as box:
        assert [s.seq for s in await box.take()] == [1]


async def test_eviction_takes_routine_records_only_and_records_the_ranges(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path / "o.db", Limits(max_rows=10, min_free_bytes=0)) as box:
        await box.store(rec(0, priority=Priority.SOS, kind=RecordKind.SOS_START, session="s1"))
        for i in range(1, 4):
            await box.store(rec(i, priority=Priority.LIVE, session="s1"))
        for i in range(4, 25):
            await box.store(rec(i))
        st = await box.stats()
        assert st.depth <= 10
        kept = await box.take(100)
        assert [s.seq for s in kept if s.record.session] == [1, 2, 3, 4]  # SOS route kept
        gaps = [s for s in kept if s.record.kind is RecordKind.GAP]
        assert gaps and all(g.record.data["reason"] == "evicted" for g in gaps)
        evicted = [s for g in gaps for a, b in g.record.data["ranges"] for s in range(a, b + 1)]
        routine = [s.seq for s in kept if s.record.kind is RecordKind.FIX and not s.record.session]
        # the oldest routine ones went (the gap record's own seq sits among them)
        assert sorted(evicted + [g.seq for g in gaps]) == list(range(5, min(routine)))
        assert len(gaps) == 1  # one gap record, extended while it waits unsent
        # every seq handed out is accounted for: kept, or named by a gap record
        last = max(s.seq for s in kept)
        assert sorted(evicted + [s.seq for s in kept]) == list(range(1, last + 1))


async def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", Limits(min_free_bytes=0)) as box:
        for i in range(5):
            await box.store(rec(i, priority=Priority.SOS, session="s"))
        # Cap the database file: what a full file system looks like to SQLite.
        await Probe(box).sql("PRAGMA max_page_count=20")

        async def fill() -> None:
            for i in range(5, 500):
                await box.store(rec(i, priority=Priority.SOS, session="s", size=2000))

        with pytest.raises(OutboxFull, match="free some space"):
            await fill()
        await Probe(box).sql("PRAGMA max_page_count=1000000")
        nxt = await box.store(rec(999))  # the daemon carries on once there is room
        seqs = [s.seq for s in await box.take(1000)]
        assert len(seqs) > 5
        assert seqs == list(range(1, len(seqs) + 1))  # nothing lost; the failure used no seq
        assert nxt.seq == seqs[-1]


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def kept_aside(directory: Path) -> bytes:
    aside = sorted(p for p in directory.iterdir() if ".corrupt-" in p.name)
    assert aside, "the corrupt file must be kept"
    return aside[0].read_bytes()


async def test_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        await box.store(rec(1))
        old_id = box.outbox_id
    corrupt(path)
    async with await Outbox.open(path) as box:
        assert box.outbox_id != old_id
        assert (await box.store(rec(2))).seq == 1
    assert kept_aside(tmp_path).startswith(b"this is not a database")
    assert "ALARM" in caplog.text


async def test_session_expiry_applies_to_later_records_and_purge_deletes(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        await box.store(rec(1, session="s1", priority=Priority.LIVE))
        await box.store(rec(2))
        end = T0 + timedelta(hours=1)
        await box.expire_session("s1", end + timedelta(hours=72))
        late = await box.store(rec(3, session="s1", kind=RecordKind.SOS_END))
        taken = {s.seq: s.record.expires for s in await box.take()}
        assert taken[1] == taken[late.seq] == end + timedelta(hours=72)
        assert taken[2] is None
        assert await box.purge(end + timedelta(hours=71)) == 0
        await box.requeue()
        assert await box.purge(end + timedelta(hours=72)) == 2
        # what expired undelivered is named by a gap record, delivered like the rest
        left = await box.take()
        assert [s.record.kind for s in left] == [RecordKind.GAP, RecordKind.FIX]
        assert left[0].record.data == {"ranges": [[1, 1], [3, 3]], "reason": "expired"}


async def test_a_slow_commit_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """A commit held up (an fsync on a tired SD card) until the event loop has done
    some work of its own: if the commit ran on the loop, the loop could not do it, and
    the commit would wait in vain."""
    async with await Outbox.open(tmp_path / "o.db") as box:
        loop_ran = threading.Event()
        released: list[bool] = []

        def slow(real: Callable[..., Any]) -> Callable[..., Any]:
            def commit(records: Any) -> Any:
                released.append(loop_ran.wait(10))
                return real(records)

            return commit

        with Probe(box).wrap("store", slow):
            storing = asyncio.create_task(box.store(rec(1)))
            turns = 0
            while not storing.done():  # the loop keeps turning while the commit is held
                turns += 1
                if turns == 100:
                    loop_ran.set()
                await asyncio.sleep(0)
            assert (await storing).seq == 1
        assert released == [True], "the commit was never released: the loop was blocked"


async def test_sos_controller_on_the_durable_outbox(tmp_path: Path) -> None:
    """The outbox is a Recorder: an SOS stored through it, its expiry, its deletion."""
    from sosbeacon.device.gps import Fix, FixMode
    from sosbeacon.device.sos import Contact, SosConfig, SosController
    from sosbeacon.sim.clock import SimClock

    clock = SimClock(T0)
    async with await Outbox.open(tmp_path / "o.db") as box:
        ctl = SosController(
            config=SosConfig(contacts=(Contact("Alice"),)), recorder=box, clock=clock
        )
        await ctl.start(trigger="cli", now=True)
        for i in range(3):
            await clock.advance(31)
            await ctl.on_fix(
                Fix(
                    time=clock.now(),
                    lat=55.95 + i * 0.001,
                    lon=-3.17,
                    mode=FixMode.THREE_D,
                    received=clock.monotonic(),
                )
            )
        await ctl.stop(trigger="cli")
        stored = await box.take()
        # SOS events go first (priority), then the route; seq is the order of storing.
        assert [(s.seq, s.record.kind) for s in stored] == [
            (1, RecordKind.SOS_START),
            (5, RecordKind.SOS_END),
            (2, RecordKind.FIX),
            (3, RecordKind.FIX),
            (4, RecordKind.FIX),
        ]
        expiry = clock.now() + timedelta(hours=72)
        assert {s.record.expires for s in stored} == {expiry}
        assert await box.purge(expiry) == 5
        assert await box.next_expiry() is None


async def test_the_kept_row_count_matches_the_table(tmp_path: Path) -> None:
    """Eviction decisions use a row count kept in memory; it must never drift."""
    path = tmp_path / "o.db"
    async with await Outbox.open(path, Limits(max_rows=50, min_free_bytes=0)) as box:
        for i in range(80):
            await box.store(rec(i, session="s" if i % 10 == 0 else None))
        taken = await box.take(7)
        await box.ack([s.seq for s in taken] + [10_000])  # an unknown seq deletes nothing
        await box.expire_session("s", T0)
        await box.purge(T0)
        assert Probe(box).rows == (await box.stats()).depth
    async with await Outbox.open(path) as box:
        assert Probe(box).rows == (await box.stats()).depth


async def test_a_write_that_fails_halfway_leaves_nothing_half_done(tmp_path: Path) -> None:
    """An error in the middle of an expiry, an eviction, a wipe or a store rolls the whole of
    it back: the records are all still there, counted, and the next write works (an
    open transaction left behind would refuse every later store)."""
    import sqlite3

    async with await Outbox.open(tmp_path / "o.db", Limits(min_free_bytes=0)) as box:
        for i in range(20):
            await box.store(rec(i, session="s" if i < 10 else None))
        await box.expire_session("s", T0)

        def full(*args: Any) -> int:
            raise sqlite3.OperationalError("database or disk is full")

        with Probe(box).wrap("gap", lambda real: full):
            with pytest.raises(OutboxError, match="full") as err:
                await box.purge(T0)
            assert isinstance(err.value.__cause__, sqlite3.OperationalError)  # SQLite's
            with pytest.raises(OutboxError, match="full"):
                await box.wipe()
            with pytest.raises(TypeError):  # a record that cannot be stored at all
                await box.store(Record(RecordKind.BATTERY, T0, {"battery": object()}))
            box.limits = Limits(max_rows=15, min_free_bytes=0)
            with pytest.raises(OutboxError, match="full"):
                await box.store(rec(20))  # its eviction fails first: the record is not stored
            assert Probe(box).rows == (await box.stats()).depth == 20
        assert (await box.store(rec(21))).seq == 22  # evicted to make room: 21 is the gap
        assert await box.purge(T0) == 10
        assert Probe(box).rows == (await box.stats()).depth


async def test_delivered_sos_records_stay_until_expiry_and_export_and_purge(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        await box.store(rec(1, session="s1", priority=Priority.LIVE))
        await box.store(rec(2))  # routine
        await box.store(rec(3, session="s1", priority=Priority.LIVE))
        taken = await box.take()
        await box.ack([s.seq for s in taken][:2])  # seq 1 and 3 (LIVE first)
        st = await box.stats()
        assert (st.depth, st.kept) == (1, 2)  # the route stays on the device, delivered
        exported = {s.seq: delivered for s, delivered in await box.export()}
        assert exported == {1: True, 2: False, 3: True}
        await box.requeue()
        await box.expire_session("s1", T0)
        assert await box.purge(T0) == 2  # expired, delivered: deleted without a gap
        assert [s.record.kind for s in await box.take()] == [RecordKind.FIX]
        await box.requeue()
        assert await box.wipe() == 1
        left = await box.take()  # the undelivered one is announced as purged
        assert [s.record.data for s in left] == [{"ranges": [[2, 2]], "reason": "purged"}]


async def test_message_ids_survive_a_restart_and_a_message_formed_anew_takes_new_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as box:
        for i in range(6):
            await box.store(rec(i))
        await box.take()
        await box.bind({"m-a": [1, 2, 3], "m-b": [4, 5, 6]})
    async with await Outbox.open(path) as box:  # a restart: all pending again, names kept
        taken = await box.take()
        assert [(s.seq, s.msg_id) for s in taken] == [
            (1, "m-a"), (2, "m-a"), (3, "m-a"), (4, "m-b"), (5, "m-b"), (6, "m-b")
        ]  # fmt: skip
        await box.bind({"m-a1": [1, 2], "m-a2": [3]})  # too large for the broker: split
        await box.requeue()
        assert [s.msg_id for s in await box.take()] == ["m-a1", "m-a1", "m-a2"] + ["m-b"] * 3
        await box.ack([1, 2, 3])
        await box.requeue()
        assert [(s.seq, s.msg_id) for s in await box.take()] == [(4, "m-b"), (5, "m-b"), (6, "m-b")]
        names = await Probe(box).sql("SELECT msg_id FROM bindings")
        assert names == [("m-b",)]  # the delivered message's names went with it


async def test_a_message_formed_before_is_handed_out_whole_whatever_the_limit(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as box:
        for i in range(10):
            await box.store(rec(i))
        await box.take()
        await box.bind({"m-a": [1, 2, 3], "m-b": [4, 5, 6, 7], "m-c": [8, 9, 10]})
        await box.requeue()  # a reconnect: they go again, as the same messages
        first = await box.take(5)
        assert [(s.seq, s.msg_id) for s in first][-3:] == [(5, "m-b"), (6, "m-b"), (7, "m-b")]
        assert [s.seq for s in await box.take(5)] == [8, 9, 10]
        await box.requeue()
        await box.bind({"m-d": [1, 2, 3, 8]})  # a message in two ranges (4-7 went apart)
        await box.requeue()
        assert [s.seq for s in await box.take(2)] == [1, 2, 3, 4, 5, 6, 7, 8]


#: the schema of the first release (version 0), to check that its outboxes open
SCHEMA_0 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE records (
    seq      INTEGER PRIMARY KEY,
    msg_id   TEXT,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    time     TEXT NOT NULL,
    session  TEXT,
    drill    INTEGER NOT NULL,
    data     TEXT NOT NULL,
    expires  REAL,
    state    INTEGER NOT NULL DEFAULT 0  -- 0 pending, 1 in flight, 2 delivered (kept)
);
CREATE INDEX records_order ON records (state, priority, seq);
CREATE INDEX records_session ON records (session);
CREATE TABLE sessions (session TEXT PRIMARY KEY, expires REAL NOT NULL);
INSERT INTO meta VALUES ('outbox_id', '00112233aabbccdd');
INSERT INTO counters VALUES ('seq', 4);
INSERT INTO records VALUES
  (1, 'm-old', 'fix', 2, '2026-11-22T10:00:00+00:00', NULL, 0,
   '{"fix":{"t":"2026-11-22T10:00:00Z","lat":48.1,"lon":11.5,"alt":520.4}}', NULL, 1),
  (2, 'm-old', 'fix', 2, '2026-11-22T10:00:01+00:00', NULL, 0,
   '{"fix":{"t":"2026-11-22T10:00:01Z","lat":48.1001,"lon":11.5002}}', NULL, 1),
  (3, NULL, 'battery', 2, '2026-11-22T10:00:02+00:00', NULL, 0,
   '{"battery":{"pct":80}}', NULL, 0),
  (4, NULL, 'fix', 1, '2026-11-22T10:00:03+00:00', 's1', 0,
   '{"fix":{"t":"2026-11-22T10:00:03Z","lat":48.2,"lon":11.6}}', NULL, 2);
"""


async def test_an_outbox_of_the_first_release_opens_with_nothing_lost(tmp_path: Path) -> None:
    import sqlite3

    from sosbeacon.device.wire import decode_track, encode_track

    path = tmp_path / "o.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_0)
    old.close()
    async with await Outbox.open(path) as box:
        assert box.outbox_id == "00112233aabbccdd"
        taken = await box.take()
        assert [(s.seq, s.msg_id, s.row) for s in taken] == [
            (1, "m-old", None), (2, "m-old", None), (3, None, None)
        ]  # fmt: skip
        got = decode_track(encode_track(box.outbox_id, taken))
        assert [g.seq for g in got] == [1, 2, 3]
        assert got[1].data["fix"] == {"lat": 48.1001, "lon": 11.5002}
        assert (await box.stats()).kept == 1  # the delivered SOS point is still kept
        fix = {"t": "2026-11-22T10:00:05Z", "lat": 48.3, "lon": 11.7}
        new = await box.store(Record(RecordKind.FIX, T0, {"fix": fix}))
        assert new.seq == 5 and new.row is not None  # new fixes get their track rows
        version = (await Probe(box).sql("PRAGMA user_version"))[0][0]
        assert version == SCHEMA_VERSION == 4
        # routine was 2 before voice notes took 2: the backlog is still routine, after voice
        prio = await Probe(box).sql("SELECT seq, priority FROM records ORDER BY seq")
        assert [tuple(r) for r in prio] == [(1, 3), (2, 3), (3, 3), (4, 1), (5, 3)]
        # records from before commit times were kept count as committed at the upgrade
        assert {s.committed for s in taken} == {taken[0].committed} != {None}
        await box.store(Record(RecordKind.FIX, T0, {"fix": {**fix, "lat": 48.31}}))
        chain = await Probe(box).sql("SELECT seq, row_prev FROM records WHERE seq>=5")
        assert chain == [(5, None), (6, 5)]  # fixes stored after the upgrade are chained


async def test_a_drain_takes_fixes_as_runs_of_their_stored_differences(tmp_path: Path) -> None:
    from sosbeacon.device.records import FixRun, seqs_of
    from sosbeacon.device.wire import encode_track
    from tests.mqtt_env import fix_record

    routine = {"first": Priority.ROUTINE, "last": Priority.ROUTINE}
    path = tmp_path / "o.db"
    battery = Record(RecordKind.BATTERY, T0, {"battery": {"pct": 80}})
    async with await Outbox.open(path) as box:
        for i in range(3):
            await box.store(fix_record(i, priority=Priority.ROUTINE))  # 1-3
        await box.store(battery)  # 4: not a fix; the fixes' chain goes on past it
        for i in range(3, 6):
            await box.store(fix_record(i, priority=Priority.ROUTINE))  # 5-7
        await box.store(fix_record(6, session="s1"))  # 8: a live fix, another stream
    async with await Outbox.open(path) as box:  # after a restart the chain starts anew
        for i in range(7, 10):
            await box.store(fix_record(i, priority=Priority.ROUTINE))  # 9-11

        def shape(items: list[Any]) -> list[tuple[bool, list[int], str | None]]:
            return [(isinstance(s, FixRun), seqs_of([s]), s.msg_id) for s in items]

        taken = await box.take(run=100, **routine)
        assert shape(taken) == [
            (True, [1, 2, 3, 5, 6, 7], None), (False, [4], None), (True, [9, 10, 11], None)
        ]  # fmt: skip
        await box.requeue()
        one_by_one = await box.take(**routine)
        assert all(not isinstance(s, FixRun) for s in one_by_one)  # run=1: none
        assert encode_track("b", taken) == encode_track("b", one_by_one)

        await box.requeue()
        assert [seqs_of([s]) for s in await box.take(run=4, **routine)] == [
            [1, 2, 3, 5], [4], [6, 7], [9, 10, 11]
        ]  # fmt: skip
        await box.requeue()
        assert [seqs_of([s]) for s in await box.take(2, run=100, **routine)] == [[1, 2]]
        # 3's difference is from 2, which is in flight: 3 starts a run of its own
        rest = await box.take(run=100, **routine)
        assert [seqs_of([s]) for s in rest] == [[3, 5, 6, 7], [4], [9, 10, 11]]

        await box.bind({"m-a": [1, 2], "m-b": [3, 5, 6]})  # a run never spans two messages
        await box.requeue()
        assert shape(await box.take(run=100, **routine)) == [
            (True, [1, 2], "m-a"), (True, [3, 5, 6], "m-b"), (False, [4], None),
            (False, [7], None), (True, [9, 10, 11], None),
        ]  # fmt: skip
        await box.ack([1, 2, 3, 4, 5, 6, 7])
        await box.requeue()
        run = (await box.take(run=100, **routine))[0]
        assert isinstance(run, FixRun) and run.seqs == [9, 10, 11]
        front, back = await box.cut(run)  # too large for one message: two halves
        assert (seqs_of([front]), seqs_of([back])) == ([9], [10, 11])
        assert encode_track("b", [front, back]) == encode_track("b", [run])


def size(p: Path) -> int:
    return p.stat().st_size


async def test_the_wal_stays_bounded_while_a_backlog_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints run beside the commits (never inside one), yet the WAL starts over
    even while acknowledgements are committed back to back."""
    import sosbeacon.device.outbox.writer as outbox_module
    from sosbeacon.device.records import seqs_of

    mark = 128 * 1024
    monkeypatch.setattr(outbox_module, "WAL_CHECKPOINT_BYTES", mark)
    path = tmp_path / "o.db"
    wal = Path(f"{path}-wal")
    async with await Outbox.open(path) as box:
        sizes = []
        for chunk in range(20):
            await asyncio.gather(*(box.store(rec(chunk * 500 + i, size=200)) for i in range(500)))
            sizes.append(size(wal))
        written = size(box.path) + size(wal)
        seqs = seqs_of(await box.take(20_000, run=500))
        assert len(seqs) == 10_000
        for i in range(0, len(seqs), 250):
            await box.ack(seqs[i : i + 250])
            sizes.append(size(wal))
        assert not await box.has_undelivered()
    # about 4 MB went through the WAL; it never held more than a few checkpoints' worth
    assert written > 20 * mark
    assert max(sizes) < 12 * mark, sizes


class _WatchedLock:
    """The outbox's hand-out lock, noting when a thread had to wait for it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self.waited.set()
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


async def test_expiry_extending_a_gap_record_while_the_send_loop_takes_it(
    tmp_path: Path,
) -> None:
    """Expiry (the writer thread) extends a waiting gap record while the urgent send
    loop (the reader thread) takes that same record. Whatever the interleaving, the gap
    record handed out names every seq the table says it names: otherwise its old
    ranges go out, it is deleted at the PUBACK, and the receiver sees a loss."""
    async with await Outbox.open(tmp_path / "o.db") as box:
        await box.store(rec(0, session="a", priority=Priority.LIVE))  # seq 1
        await box.store(rec(1, session="b", priority=Priority.LIVE))  # seq 2
        await box.expire_session("a", T0)
        assert await box.purge(T0) == 1  # seq 1 expired undelivered: gap record, seq 3
        await box.expire_session("b", T0)  # the next purge extends seq 3 to name seq 2
        probe = Probe(box)
        lock = _WatchedLock(probe.lock)
        probe.lock = lock
        extended, go = threading.Event(), threading.Event()

        def held(real: Callable[..., int]) -> Callable[..., int]:
            def gap(*args: Any) -> int:
                out = real(*args)
                extended.set()  # rewritten inside the expiry's transaction, uncommitted
                go.wait(10)
                return out

            return gap

        with probe.wrap("gap", held):
            purge = asyncio.create_task(box.purge(T0))
            assert await asyncio.to_thread(extended.wait, 10)
            take = asyncio.create_task(box.take(first=Priority.SOS, last=Priority.LIVE))
            waited = asyncio.create_task(asyncio.to_thread(lock.waited.wait, 10))
            # either the take went ahead beside the half-done expiry, or it waits for it
            await asyncio.wait({take, waited}, return_when=asyncio.FIRST_COMPLETED)
            go.set()
            assert await purge == 1
        taken = [s for s in await take if isinstance(s, Stored)]
        # what the receiver is told: the gap records as they were taken (an expired fix
        # taken meanwhile is dropped when the message is formed, never sent) ...
        named = _named(s for s in taken if s.kind is RecordKind.GAP)
        await box.ack([s.seq for s in taken])  # ... delivered, and so deleted
        # ... and the gap records still to go
        named |= _named(s for s, _ in await box.export() if s.kind is RecordKind.GAP)
        lock.waited.set()  # the watching thread ends
        await waited
        assert named == {1, 2}, "an expired seq is named by no gap record: a loss"


def _named(gaps: Iterable[Stored]) -> set[int]:
    return {q for s in gaps for a, b in s.record.data["ranges"] for q in range(a, b + 1)}


def _counting(
    from_memory: list[bool],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper for the ``fresh`` seam noting whether each take came from memory."""

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def take_fresh(*args: Any) -> Any:
            out = real(*args)
            from_memory.append(out is not None)
            return out

        return take_fresh

    return counted


def _shape(item: Any) -> tuple[Any, ...]:
    """Everything a take hands out about an item, to compare two takes by."""
    from sosbeacon.device.records import FixRun

    if isinstance(item, FixRun):
        ends = (_shape(item.first), _shape(item.last))
        return ("run", tuple(item.seqs), item.msg_id, tuple(item.deltas), ends)
    r = item.record
    return (
        item.seq, item.msg_id, item.kind, item.priority, item.session, item.drill,
        item.expires, item.row, item.committed, r.time, r.data, r.expires,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_urgent_records_taken_from_memory_are_what_the_table_would_hand_out(
    tmp_path: Path, seed: int
) -> None:
    """SOS records and live positions just committed are handed out without reading
    them back (``Handout.take_fresh``). Two outboxes go through the same random
    stores, takes, acknowledgements, requeues, message ids, expiries and purges, one
    with that shortcut and one always reading the table: every take hands out the same
    records, with the same ids, data, expiry and runs, and the shortcut was used."""
    import random

    from sosbeacon.sim.clock import SimClock
    from tests.mqtt_env import fix_record

    rng = random.Random(seed)
    clock = SimClock(T0)
    fast = await Outbox.open(tmp_path / "fast.db", clock=clock)
    table = await Outbox.open(tmp_path / "table.db", clock=clock)
    from_memory: list[bool] = []
    counted = _counting(from_memory)

    def never(real: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args: None

    def record(i: int) -> Record:
        session = rng.choice(["s1", "s2"])
        pick = rng.random()
        if pick < 0.25:
            kind = rng.choice([RecordKind.SOS_START, RecordKind.SOS_END])
            return rec(i, priority=Priority.SOS, session=session, kind=kind)
        if pick < 0.55:
            return fix_record(i, session=session)  # a live position, with its row
        if pick < 0.65:
            return rec(i, priority=Priority.LIVE, session=session, kind=RecordKind.BATTERY)
        return fix_record(i, priority=Priority.ROUTINE)

    inflight: set[int] = set()
    with Probe(fast).wrap("fresh", counted), Probe(table).wrap("fresh", never):
        for step in range(300):
            op = rng.random()
            if op < 0.4:
                batch = [record(step * 10 + k) for k in range(rng.choice([1, 1, 1, 3]))]
                for box in (fast, table):
                    await asyncio.gather(*(box.store(r) for r in batch))
            elif op < 0.75:
                limit, run = rng.choice([1, 2, 5, 50]), rng.choice([1, 100])
                urgent = rng.random() < 0.8
                first = Priority.SOS if urgent else Priority.VOICE
                last = (
                    rng.choice([Priority.SOS, Priority.LIVE, Priority.LIVE])
                    if urgent
                    else Priority.ROUTINE
                )
                got = [
                    await box.take(limit, first=first, last=last, run=run) for box in (fast, table)
                ]
                assert [_shape(s) for s in got[0]] == [_shape(s) for s in got[1]], step
                seqs = [q for s in got[0] for q in getattr(s, "seqs", [s.seq])]
                assert not inflight & set(seqs), f"step {step}: handed out twice"
                inflight |= set(seqs)
                if seqs and rng.random() < 0.2:
                    named = {f"m{step}": seqs}
                    for box in (fast, table):
                        await box.bind(named)
            elif op < 0.87 and inflight:
                acked = rng.sample(sorted(inflight), rng.randint(1, len(inflight)))
                inflight -= set(acked)
                for box in (fast, table):
                    await box.ack(acked)
            elif op < 0.95 and inflight:
                back = None if rng.random() < 0.3 else rng.sample(sorted(inflight), 1)
                inflight -= set(back) if back else inflight
                for box in (fast, table):
                    await box.requeue(back)
            else:
                session = rng.choice(["s1", "s2"])
                at = clock.now() + timedelta(seconds=rng.choice([-1, 3600]))
                for box in (fast, table):
                    await box.expire_session(session, at)
                purged = [await box.purge(clock.now()) for box in (fast, table)]
                assert purged[0] == purged[1]
                left = {s.seq for s, _ in await fast.export()}
                inflight &= left  # an expired record in flight is gone
        exported = [[(_shape(s), d) for s, d in await box.export()] for box in (fast, table)]
    await fast.close()
    await table.close()
    assert exported[0] == exported[1]
    assert sum(from_memory) >= 10, f"taken from memory {sum(from_memory)} of {len(from_memory)}"


async def test_urgent_records_stored_while_takes_run_are_each_handed_out_once(
    tmp_path: Path,
) -> None:
    """Stores race takes (the writer thread registers what it committed while the
    reader thread reads, and the event loop takes from memory): no record is handed out
    while in flight, and every one is handed out, then acknowledged, once."""
    import random

    from tests.mqtt_env import fix_record

    rng = random.Random(7)
    from_memory: list[bool] = []
    counted = _counting(from_memory)

    async with await Outbox.open(tmp_path / "o.db") as box:
        done = asyncio.Event()
        stored: set[int] = set()

        async def produce() -> None:
            for i in range(400):
                if rng.random() < 0.5:
                    r = rec(i, priority=Priority.SOS, session="s", kind=RecordKind.SOS_START)
                else:
                    r = fix_record(i, session="s")
                burst = [box.store(r) for _ in range(rng.choice([1, 1, 2, 4]))]
                stored.update(s.seq for s in await asyncio.gather(*burst))
                if i % 7 == 0:
                    await box.store(rec(i))  # routine, taken by nobody here
            done.set()

        inflight: set[int] = set()
        acked: set[int] = set()

        async def consume() -> None:
            while True:
                finished = done.is_set()
                got = await box.take(rng.choice([1, 3, 50]), last=Priority.LIVE, run=100)
                seqs = [q for s in got for q in getattr(s, "seqs", [s.seq])]
                assert not set(seqs) & (inflight | acked), "handed out twice"
                inflight.update(seqs)
                if inflight and rng.random() < 0.5:
                    now = rng.sample(sorted(inflight), rng.randint(1, len(inflight)))
                    await box.ack(now)
                    inflight.difference_update(now)
                    acked.update(now)
                elif inflight and rng.random() < 0.05:
                    back = rng.sample(sorted(inflight), 1)
                    await box.requeue(back)
                    inflight.difference_update(back)
                    continue  # pending again: the next take hands it out
                if finished and not got:
                    return
                await asyncio.sleep(0)

        with Probe(box).wrap("fresh", counted):
            await asyncio.gather(produce(), consume())
        await box.ack(sorted(inflight))
        acked |= inflight
        assert await box.take(last=Priority.LIVE) == []
    assert acked == stored, f"never handed out: {sorted(stored - acked)[:10]}"
    assert sum(from_memory) >= 10, f"taken from memory {sum(from_memory)} of {len(from_memory)}"


async def test_a_stored_record_goes_out_as_the_same_bytes_without_decoding_its_data(
    tmp_path: Path,
) -> None:
    """An SOS record read back is encoded with its data's stored JSON text spliced in
    (``wire.encode_stored``): the bytes are those of encoding the record itself, for
    data with non-ASCII names too; a row stored by an older release (its text
    ASCII-escaped) still gives the same message once decoded."""
    import json

    from sosbeacon.device.wire import decode_sos, encode_sos, encode_stored

    data = {"contacts": [{"name": "Zoë Ñandú 😀", "reach": "+44 7700 900123"}], "acc": 4.5}
    r = Record(RecordKind.SOS_START, T0, data, Priority.SOS, session="s-1")
    async with await Outbox.open(tmp_path / "o.db") as box:
        stored = await box.store(r)
        (row,) = await box.take()
        assert row.data_json() is not None  # read back: the stored text is at hand
        assert encode_stored("b", row) == encode_sos("b", stored.seq, r)
        assert encode_stored("b", stored) == encode_sos("b", stored.seq, r)  # no text: encoded
        await Probe(box).sql(
            "UPDATE records SET data=? WHERE seq=?", json.dumps(data, separators=(",", ":")), 1
        )
        await box.requeue()
        (old,) = await box.take()
        assert "\\u" in (old.data_json() or "")
        assert json.loads(encode_stored("b", old)) == json.loads(encode_sos("b", 1, r))
        assert decode_sos(encode_stored("b", old)).data == data


async def test_delivered_session_records_go_back_in_the_queue_when_the_relay_lacks_them(
    tmp_path: Path,
) -> None:
    """``resend``: an SOS session's records, kept delivered, are pending again (the next
    take hands them out, even one from memory); routine records, deleted at their
    acknowledgement, and expired ones are not there to go."""
    urgent = {"first": Priority.SOS, "last": Priority.LIVE}
    async with await Outbox.open(tmp_path / "o.db") as box:
        await box.store(rec(1, priority=Priority.LIVE, session="s1"))  # 1
        await box.store(rec(2))  # 2: routine
        await box.store(rec(3, priority=Priority.SOS, session="s1", kind=RecordKind.SOS_START))
        await box.store(rec(4, priority=Priority.LIVE, session="s2"))  # 4: expires below
        taken = await box.take()
        await box.ack([s.seq for s in taken])
        await box.expire_session("s2", datetime.now(UTC) - timedelta(seconds=1))
        assert await box.take(**urgent) == []  # everything urgent read: the next may be from memory
        assert await box.resend([1, 2, 3, 4, 99]) == 2
        assert [s.seq for s in await box.take(**urgent)] == [3, 1]
        assert {s.seq: d for s, d in await box.export()} == {1: False, 3: False, 4: True}
        await box.ack([1, 3])
        assert {s.seq: d for s, d in await box.export()} == {1: True, 3: True, 4: True}


def test_a_take_that_read_everything_does_not_vouch_for_records_let_go_meanwhile() -> None:
    """The race the stores-racing-takes test found once in about 60 runs: a take reads
    the table; meanwhile the writer registers more urgent records than it keeps (the
    taker is slow: one record a take) and lets them go; the take then says it read
    everything. Those let go may have been committed after its snapshot began: the next
    take must read the table, not hand out from memory the one record still kept."""
    from sosbeacon.device.outbox.handout import Handout

    h = Handout()
    sos = int(Priority.SOS)
    h.read_all(sos, h.registered())  # a take read everything: the SOS records are known
    before = h.registered()  # the next take notes this, then its snapshot begins
    h.committed(
        Stored(seq, None, rec(seq, priority=Priority.SOS, session="s", kind=RecordKind.SOS_START))
        for seq in range(1, 66)
    )  # 65 committed meanwhile, past what is kept: the first 64 let go
    h.read_all(sos, before)  # that take ends, having read everything its snapshot had
    assert h.take_fresh(1000, sos, sos, 1) is None, "records only the table has were skipped"
