"""Storage faults never drop an SOS and never bring a stopped one back.

Only proven corruption moves a file aside: a lock held by another process is waited
for, a full disk at start-up gives up the reserve and opens, and a corrupt file is
salvaged (every readable record and the active session) before it is set aside. The
full-disk tests run on a real, small tmpfs (mounted by the test: root is needed, so
they fail under CI without it and skip on a developer's machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device.outbox import ACTIVE_SESSION, Limits, Outbox, OutboxUnavailable, SessionMark
from sosbeacon.device.outbox.faults import Fault, classify
from sosbeacon.device.outbox.testing import Probe
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.sim.smalldisk import can_mount, fill
from sosbeacon.sim.smalldisk import small_disk as mounted
from tests.conftest import require

T0 = datetime.now(UTC).replace(microsecond=0)
SESSION = {"id": "s1", "drill": False, "started": "2026-01-01T00:00:00+00:00", "trigger": "cli"}


def point(i: int, *, pad: int = 300) -> Record:
    """A route point of session s1; its data names it (``marker-<i>``) in the file."""
    fix = {"t": (T0 + timedelta(seconds=i)).isoformat(), "lat": 55.9 + i * 1e-4, "lon": -3.1}
    return Record(
        RecordKind.FIX,
        T0 + timedelta(seconds=i),
        {"fix": fix, "note": f"marker-{i:04d}", "pad": "x" * pad},
        Priority.LIVE,
        "s1",
    )


async def sos_outbox(path: Path, n: int = 95, **kw: object) -> str:
    """An outbox with an active SOS session and ``n`` unsent route points; its id."""
    async with await Outbox.open(path, **kw) as box:  # type: ignore[arg-type]
        await box.state.put(ACTIVE_SESSION, SESSION)
        for i in range(n):
            await box.store(point(i))
        return box.outbox_id


class _Said(logging.Handler):
    """Sets an event when a log line containing ``text`` is emitted (any thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def said(text: str) -> Iterator[threading.Event]:
    handler = _Said(text)
    logging.getLogger("sosbeacon.device.outbox").addHandler(handler)
    try:
        yield handler.event
    finally:
        logging.getLogger("sosbeacon.device.outbox").removeHandler(handler)


def set_aside(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".corrupt-" in p.name)


def test_only_corruption_is_called_corruption() -> None:
    def err(code: int) -> sqlite3.OperationalError:
        e = sqlite3.OperationalError("x")
        e.sqlite_errorcode = code  # type: ignore[attr-defined]
        return e

    assert classify(err(13)) is Fault.FULL
    assert classify(err(5)) is Fault.LOCKED
    assert classify(err(10 | (4 << 8))) is Fault.IO  # an extended I/O error code
    assert classify(err(8)) is Fault.READONLY
    assert classify(err(11)) is Fault.CORRUPT
    assert classify(err(26)) is Fault.CORRUPT
    assert classify(OSError(errno.ENOSPC, "no space")) is Fault.FULL
    # a message that reads like corruption is not proof of it
    assert classify(sqlite3.OperationalError("disk image is malformed?")) is Fault.OTHER


async def test_a_lock_at_start_up_is_waited_for_and_nothing_is_moved(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box_id = await sos_outbox(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process, holding the file
    with said("is locked by another process") as waiting:
        opening = asyncio.create_task(Outbox.open(path, lock_wait=30))
        assert await asyncio.to_thread(waiting.wait, 20)
        assert not opening.done()
        holder.execute("COMMIT")
        holder.close()
        async with await opening as box:
            assert box.outbox_id == box_id
            assert await box.state.get(ACTIVE_SESSION) == SESSION
            assert (await box.stats()).depth == 95
    assert set_aside(tmp_path) == []


async def test_a_lock_held_too_long_is_a_clear_error_and_the_file_is_left(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    await sos_outbox(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutboxUnavailable, match="locked by another process") as exc:
            await Outbox.open(path, lock_wait=0.5)
        assert "left untouched" in str(exc.value) and "another sosd" in str(exc.value)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert set_aside(tmp_path) == []
    async with await Outbox.open(path) as box:
        assert (await box.stats()).depth == 95


def damage_page_of(path: Path, needle: bytes) -> None:
    """Overwrite, with garbage, the database page holding ``needle``."""
    data = path.read_bytes()
    at = data.index(needle)
    page = 4096
    with open(path, "r+b") as f:
        f.seek(at // page * page)
        f.write(bytes(range(256)) * (page // 256))


def damage_pages(path: Path, pages: list[int]) -> None:
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * 4096)
            f.write(bytes(range(256)) * 16)


def remove_wal(path: Path) -> None:
    """As after a power cut: SQLite must make its -wal and -shm files again."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def reserves(path: Path) -> tuple[bool, bool]:
    """Whether the opening reserve and the SOS reserve are there."""
    return Path(f"{path}.reserve-open").exists(), Path(f"{path}.reserve").exists()


def use_sos_reserve(path: Path) -> None:
    Path(f"{path}.reserve").unlink()


def root_pages(path: Path, *names: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [
            db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (n,)).fetchone()[0]
            for n in names
        ]
    finally:
        db.close()


async def checkpointed(path: Path) -> None:
    """Everything in the database file itself (the WAL copied back), as after a stop."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


async def test_damaged_indexes_lose_nothing_and_the_sos_resumes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box_id = await sos_outbox(path)
    await checkpointed(path)
    damage_pages(path, root_pages(path, "records_order", "records_by_session"))
    async with await Outbox.open(path) as box:
        assert box.outbox_id == box_id  # the seq counter was readable: numbering goes on
        assert await box.state.get(ACTIVE_SESSION) == SESSION
        kept = [s for s, _ in await box.export()]
        assert [s.seq for s in kept if s.kind is RecordKind.FIX] == list(range(1, 96))
        assert not [s for s in kept if s.kind is RecordKind.GAP]  # nothing lost, no notice
        alarm = box.alarm
        assert alarm is not None and "95 record(s) and the active SOS session salvaged" in alarm
        assert await box.ack_alarm() and box.alarm is None
        assert (await box.store(point(200))).seq == kept[-1].seq + 1
    assert len(set_aside(tmp_path)) >= 1


async def test_a_damaged_table_page_salvages_the_rest_and_names_what_is_lost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    box_id = await sos_outbox(path)
    await checkpointed(path)
    damage_page_of(path, b"marker-0050")
    async with await Outbox.open(path) as box:
        assert box.outbox_id == box_id
        assert await box.state.get(ACTIVE_SESSION) == SESSION
        kept = [s for s, _ in await box.export()]
        fixes = [s.seq for s in kept if s.kind is RecordKind.FIX]
        assert 51 not in fixes and 60 < len(fixes) < 95  # one page of points is lost ...
        (gap,) = [s for s in kept if s.kind is RecordKind.GAP]
        named = {q for a, b in gap.record.data["ranges"] for q in range(a, b + 1)}
        # ... and named, so the receivers see a notice, not a silent hole
        assert set(range(1, 96)) - set(fixes) <= named and not named & set(fixes)
        assert gap.record.data["reason"] == "corrupt"
    assert set_aside(tmp_path)


async def test_garbage_instead_of_a_database_starts_afresh_with_an_alarm(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = await sos_outbox(path, n=3)
    path.write_bytes(b"this is not a database" * 100)
    remove_wal(path)
    async with await Outbox.open(path) as box:
        assert box.outbox_id != old
        assert (await box.store(point(1))).seq == 1
        assert "new outbox_id" in (box.alarm or "")


# -- a real, small file system --------------------------------------------------------


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2M") -> Iterator[Path]:
    """A small tmpfs for the test: root only (a failure under CI without it)."""
    require("root (to mount a small tmpfs)", can_mount(), "run the tests as root")
    with mounted(where, size) as disk:
        yield disk


async def test_a_full_disk_at_start_up_opens_and_keeps_the_sos(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "outbox.db"
        box_id = await sos_outbox(path, limits=Limits(min_free_bytes=0))
        remove_wal(path)
        filler = fill(disk)
        async with await Outbox.open(path, Limits(min_free_bytes=0)) as box:
            assert box.outbox_id == box_id
            assert await box.state.get(ACTIVE_SESSION) == SESSION
            assert (await box.stats()).depth == 95
        assert set_aside(disk) == []
        filler.unlink()


async def test_a_restart_on_a_disk_that_stayed_full_still_opens(tmp_path: Path) -> None:
    """The SOS reserve was used up in the outage, the daemon stopped cleanly (SQLite
    removed its -wal and -shm), the disk is still full: the smaller reserve kept for
    opening lets it open."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "outbox.db"
        box_id = await sos_outbox(path, limits=Limits(min_free_bytes=0))
        use_sos_reserve(path)  # used up by the outage
        remove_wal(path)
        filler = fill(disk)
        async with await Outbox.open(path, Limits(min_free_bytes=0)) as box:
            assert box.outbox_id == box_id and (await box.stats()).depth == 95
        assert reserves(path) == (False, False)  # the open one was given up for this open
        filler.unlink()
        async with await Outbox.open(path, Limits(min_free_bytes=0)):
            pass
        assert reserves(path) == (True, True)  # both taken again once there is room


async def test_records_are_held_on_a_full_disk_and_stored_when_room_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        limits = Limits(min_free_bytes=0, hold_records=50)
        async with await Outbox.open(disk / "outbox.db", limits) as box:
            await box.add(point(0))
            filler = fill(disk)
            sos = Record(RecordKind.SOS_END, T0, {"reason": "cli"}, Priority.SOS, "s1")
            for i in range(1, 200):
                await box.add(point(i, pad=2000))  # never raises: held
            await box.add(sos)  # it does not wait behind the telemetry: the reserve
            assert box.full_since is not None
            assert box.held <= 50 and box.held_dropped > 0
            stored = [s.kind for s, _ in await box.export()]
            # stored, the disk still full (a held point may squeeze in after it, into the
            # room the reserve's release left: that is the flusher working, not a reorder)
            assert RecordKind.SOS_END in stored
            assert stored.index(RecordKind.SOS_END) >= 1  # after the point stored before
            assert not box.writable.is_set()
            filler.unlink()
            await asyncio.wait_for(box.writable.wait(), 30)  # retried until there is room
            assert box.held == 0 and box.full_since is None
            kept = [s for s, _ in await box.export()]
            seqs = [s.seq for s in kept]
            assert seqs == list(range(1, len(seqs) + 1))  # stored in order, gap-free
            notes = [s.record.data["note"] for s in kept if s.kind is RecordKind.FIX]
            assert notes == sorted(notes)  # the oldest telemetry was dropped, order kept
        # one line when it began, one when it ended (with a count), not one per write
        lines = [
            r.getMessage() for r in caplog.records if r.name.startswith("sosbeacon.device.outbox")
        ]
        assert sum("DISK FULL" in x for x in lines) == 1
        (back,) = [x for x in lines if x.startswith("the outbox can be written again")]
        held = re.search(r"the (\d+) write\(s\) held in memory", back)
        assert held is not None and 100 < int(held.group(1)) <= 200, back


def test_the_session_mark_is_written_in_place_on_a_full_disk(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1M") as disk:
        mark = SessionMark(disk / "sos-session")
        mark.prepare()
        filler = fill(disk)
        assert mark.write({"id": "s1", "ended": T0.isoformat()})
        assert mark.read() == {"id": "s1", "ended": T0.isoformat()}
        filler.unlink()


# -- the daemon: a stop on a full disk, then a restart ---------------------------------


@pytest.mark.parametrize("reserve", [262144, 0], ids=["with-reserve", "no-reserve"])
async def test_a_stop_on_a_full_disk_stays_stopped_across_a_restart(
    tmp_path: Path, reserve: int
) -> None:
    """The SOS is stopped with the disk full; the daemon is then killed (whatever it
    held in memory is lost), the disk freed, and the daemon started again. The stop
    holds: the session is ended, never resumed, and no location recorded after the stop
    reaches the contact."""
    from sosbeacon.device.control import request
    from sosbeacon.sim.sosd_process import kill_sosd, outbox_fault, start_sosd, stop_sosd
    from tests.test_daemon import broker_and_contact, config_text

    async with broker_and_contact(tmp_path) as (broker, rx):
        with small_disk(tmp_path / "disk", "4M") as disk:
            data = disk / "data"
            conf = tmp_path / "sosbeacon.toml"
            text = config_text(data, broker.port).replace(
                "countdown = 1.0",
                "countdown = 1.0\nmin_distance = 0.0",  # a point a second
            )
            conf.write_text(text + f"[outbox]\nmin_free_bytes = 0\nreserve_bytes = {reserve}\n")
            sock, log = data / "sosd.sock", tmp_path / "sosd.log"
            proc = await start_sosd(conf, sock, log)
            try:
                assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
                await rx.wait_until(
                    lambda: sum(r.kind == "fix" for r in rx.records) >= 3, within=30
                )
                filler = fill(disk)
                # the route fills what SQLite had left
                assert await outbox_fault(sock), "the outbox never found the disk full"
                stop = await request(sock, {"cmd": "sos-stop"})
                stopped_at = datetime.now(UTC).timestamp()
                assert stop["ok"], stop
                if reserve:  # the end went into the reserve: stored and published
                    assert "warning" not in stop, stop
                    await rx.wait_until(lambda: any(r.kind == "sos-end" for r in rx.records))
                elif "warning" in stop:  # held in memory, and lost at the kill below
                    assert "disk is full" in stop["warning"], stop
                status = await request(sock, {"cmd": "status"})
                assert status["state"] == "idle"
                await kill_sosd(proc)  # whatever was held in memory is gone
                filler.unlink()
                proc = await start_sosd(conf, sock, log)
                await rx.wait_until(lambda: any(r.kind == "sos-end" for r in rx.records))
                await rx.wait_until(
                    lambda: (rx.json("sosbeacon/t1/sos") or {}).get("kind") == "sos-end"
                )
                assert (await request(sock, {"cmd": "status"}))["state"] == "idle"
                # the restarted daemon did not bring the stopped SOS back (its events
                # since it started, the resumption among them if there had been one)
                kept = await kept_events(sock)
                assert any(e["kind"] == "link" for e in kept), kept
                assert not [e for e in kept if e["kind"] == "sos" and e["what"] == "resumed"]
            finally:
                await stop_sosd(proc)
            assert ".corrupt-" not in " ".join(p.name for p in data.iterdir())
    fixes = [r for r in rx.records if r.kind == "fix"]
    assert fixes and all(r.t <= stopped_at for r in fixes), "a location after the stop"
    assert rx.ledger().missing() == []
    ends = {r.seq for r in rx.records if r.kind == "sos-end"}  # a resend has the same seq
    assert len(ends) == 1, "one end record, never a second for the same session"


async def kept_events(sock: Path) -> list[dict[str, Any]]:
    """Every event the daemon has kept since it started (the stream goes quiet after)."""
    from sosbeacon.device.control import follow

    out: list[dict[str, Any]] = []
    stream = aiter(follow(sock, {"cmd": "events", "since": 0}))
    try:
        while True:
            try:
                ev = await asyncio.wait_for(anext(stream), 0.5)
            except TimeoutError:
                return [e for e in out if "kind" in e]
            out.append(ev)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def wal_size(path: Path) -> int:
    try:
        return Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return 0


async def telemetry_acknowledged_as_it_goes(box: Outbox, path: Path) -> tuple[int, int]:
    """1,500 fixes of 500 bytes stored one by one, every 50 taken and acknowledged: the
    largest the WAL got, and the largest checkpoint mark meanwhile."""
    probe = Probe(box)
    largest = mark = 0
    for i in range(1500):
        r = point(i, pad=500)
        await box.store(Record(r.kind, r.time, r.data, Priority.ROUTINE))
        if i % 50 == 49:
            await box.ack([s.seq for s in await box.take()])
        largest, mark = max(largest, wal_size(path)), max(mark, probe.wal_mark)
    return largest, mark


async def test_the_wal_stays_small_on_a_small_disk_and_a_clean_stop_empties_it(
    tmp_path: Path,
) -> None:
    """A 2 MB card, the default limits (min_free_bytes 64 MiB, more than the card):
    the WAL takes a share of what is free instead of growing to 4 MiB, so telemetry
    keeps being stored while other telemetry is acknowledged and deleted."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "outbox.db"
        async with await Outbox.open(path) as box:
            largest, mark = await telemetry_acknowledged_as_it_goes(box, path)
            assert box.full_since is None
        assert mark <= 600 * 1024  # a quarter of the free space, not 4 MiB
        # twice the mark at most, and one commit's pages (a few 4 KiB frames) past it
        assert largest <= 2 * mark + 64 * 1024, (largest, mark)
        assert wal_size(path) == 0  # the clean stop emptied it


async def test_the_wal_stays_bounded_when_the_checkpoint_thread_is_never_scheduled(
    tmp_path: Path,
) -> None:
    """The checkpoint thread never runs (a machine too busy): past twice the mark the
    writer checkpoints itself, so the WAL still takes at most half of what is free."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "outbox.db"
        async with await Outbox.open(path) as box:
            with Probe(box).checkpoints_unscheduled():
                largest, mark = await telemetry_acknowledged_as_it_goes(box, path)
            assert box.full_since is None
            assert (await box.stats()).depth == 0
        assert mark <= 600 * 1024
        assert mark < largest <= 2 * mark + 64 * 1024, (largest, mark)


def full_error() -> sqlite3.OperationalError:
    e = sqlite3.OperationalError("database or disk is full")
    e.sqlite_errorcode = 13  # type: ignore[attr-defined]  # SQLITE_FULL
    return e


async def test_acknowledgements_on_a_full_disk_neither_stick_nor_resend(tmp_path: Path) -> None:
    """The broker acknowledges while the commit of the deletions fails as on a full disk
    (made to fail here: SQLite often still finds room in its WAL for a deletion): the
    records stay in flight without being sent again, not even after a reconnect, and
    once the commits succeed nothing is left in flight and nothing was sent twice."""
    from tests.mqtt_env import fix_record, rig
    from tests.test_uplink_faults import FAST

    async with rig(tmp_path, config=FAST, start=False) as r:
        box = r.outbox
        seqs = [(await box.store(fix_record(i, priority=Priority.ROUTINE))).seq for i in range(40)]
        failing = [True]

        def failing_while_full(real: Callable[..., list[None]]) -> Callable[..., list[None]]:
            def ack_sync(acks: list[list[int]]) -> list[None]:
                if failing[0]:
                    raise full_error()
                return real(acks)

            return ack_sync

        probe = Probe(box)
        with probe.wrap("ack", failing_while_full):
            r.start_uplink()
            led = await r.receiver.wait_for_seqs(seqs[-1])
            assert led.missing() == []
            async with asyncio.timeout(10):  # every message answered, no deletion committed
                while True:
                    r.uplink.acked.clear()
                    if probe.unsaved_acks == seqs:
                        break
                    await r.uplink.acked.wait()
            assert not box.writable.is_set()
            assert (await box.stats()).inflight == len(seqs)
            sent = r.uplink.stats.published
            r.broker.kill()  # a reconnect while the deletions wait: nothing is sent again
            await r.uplink.disconnected.wait()
            r.broker.start()
            await r.uplink.connected.wait()
            failing[0] = False  # room again
            await asyncio.wait_for(box.writable.wait(), 30)
            st = await box.stats()
            assert st.inflight == 0 and st.depth == 0
            # (the receiver may see duplicates the broker redelivers after its own restart;
            # what matters is that the device published nothing again)
            assert r.uplink.stats.published == sent


def test_what_a_salvage_cannot_send_is_named_as_ranges_however_high_the_seqs() -> None:
    from sosbeacon.device.outbox.capacity import complement

    assert complement({3, 4, 7}, 9) == [(1, 2), (5, 6), (8, 9)]
    assert complement({1, 2}, 2) == [] and complement(set(), 0) == []
    # a counter in the billions costs nothing: no seq is listed one by one
    assert complement({5, 2**40}, 2**40) == [(1, 4), (6, 2**40 - 1)]


async def test_a_lock_taken_while_running_holds_the_sos_record_and_stores_it_after(
    tmp_path: Path,
) -> None:
    """Another process takes the write lock while sosd runs: an SOS record is held in
    memory (add() does not fail), the outage is named for what it is, and the record is
    stored once the lock is let go. (The outbox's own error, not SQLite's, is what its
    store raises: it must still be told apart from a failure that will not pass.)"""
    path = tmp_path / "outbox.db"
    async with await Outbox.open(path, Limits(min_free_bytes=0)) as box:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        start = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")
        try:
            await box.add(start)  # waits out the busy timeout, then holds it
            assert box.held == 1 and box.fault == "storage locked by another process"
            assert not box.writable.is_set()
        finally:
            holder.execute("COMMIT")
            holder.close()
        await asyncio.wait_for(box.writable.wait(), 30)
        kept = [s for s, _ in await box.export()]
        assert [s.kind for s in kept] == [RecordKind.SOS_START] and box.held == 0
