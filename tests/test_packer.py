"""The packer (records into messages) is pure: tested here without a broker or a store,
by example and by property; and the size limit, which learns from the broker."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from sosbeacon.device.records import FixRun, Item, Priority, Record, RecordKind, Stored
from sosbeacon.device.uplink import Packer, SizeLimit, sos_message_id
from sosbeacon.device.wire import SOS_KINDS, Topics, decode_sos, decode_track

NOW = datetime(2030, 6, 1, 12, tzinfo=UTC)  # the packer's clock is its argument
TOPICS = Topics.for_device("t1")
BOX = "b0x"


async def no_cut(run: FixRun) -> tuple[Item, Item]:
    raise AssertionError("no runs of fixes here")


def fix(seq: int, session: str | None, *, drill: bool = False, msg_id: str | None = None,
        expires: datetime | None = None, pad: int = 0) -> Stored:  # fmt: skip
    t = NOW - timedelta(seconds=1000 - seq)
    data = {"fix": {"t": t.isoformat(), "lat": 48.1 + seq / 1e5, "lon": 11.5, "pad": "x" * pad}}
    priority = Priority.LIVE if session else Priority.ROUTINE
    rec = Record(RecordKind.FIX, t, data, priority, session, drill, expires)
    return Stored(seq, msg_id, rec, None, NOW.timestamp() - 10)


def lifecycle(seq: int, kind: RecordKind, session: str) -> Stored:
    rec = Record(kind, NOW, {"trigger": "cli"}, Priority.SOS, session)
    return Stored(seq, None, rec, None, NOW.timestamp())


def pack(items: list[Item], *, limit: int = 16 * 1024, max_batch: int = 500, retained: int = 0):  # type: ignore[no-untyped-def]
    ids = (f"m{i}" for i in itertools.count())
    packer = Packer(
        TOPICS, SizeLimit(limit), max_batch=max_batch, routine_expiry=7 * 86400,
        new_id=lambda: next(ids),
    )  # fmt: skip
    return asyncio.run(packer.pack(items, box=BOX, now=NOW, retained_seq=retained, cut=no_cut))


def test_lifecycle_records_go_alone_under_ids_derived_from_them_and_retained_once() -> None:
    items: list[Item] = [
        lifecycle(1, RecordKind.SOS_START, "s"), fix(2, "s"), fix(3, "s"),
        lifecycle(4, RecordKind.SOS_END, "s"),
    ]  # fmt: skip
    packed = pack(items, retained=1)
    sos = [m for m in packed.messages if m.topic == TOPICS.sos]
    assert [m.msg_id for m in sos] == [sos_message_id(BOX, 1), sos_message_id(BOX, 4)]
    assert [m.retain for m in sos] == [False, True]  # seq 1 was retained before
    assert [decode_sos(m.payload).kind for m in sos] == ["sos-start", "sos-end"]
    assert [m.seqs for m in packed.new] == [[2, 3]]  # only the track batch needs binding
    assert [m.seqs for m in packed.messages] == [[1], [4], [2, 3]]  # SOS first, then by seq


def test_a_bound_message_keeps_its_id_unless_it_no_longer_fits() -> None:
    items: list[Item] = [fix(i, None, msg_id="old") for i in range(1, 4)]
    assert [(m.msg_id, m.seqs) for m in pack(items).messages] == [("old", [1, 2, 3])]
    small = pack([fix(i, None, msg_id="old") for i in range(1, 4)], limit=60)
    assert all(m.msg_id != "old" for m in small.messages) and small.new == small.messages
    assert sorted(s for m in small.messages for s in m.seqs) == [1, 2, 3]


def test_expired_records_are_left_out_and_counted() -> None:
    gone = NOW - timedelta(seconds=1)
    packed = pack([fix(1, "s", expires=gone), fix(2, None)])
    assert packed.expired == 1 and [m.seqs for m in packed.messages] == [[2]]
    later = pack([fix(3, "s", expires=NOW + timedelta(hours=72))])
    assert later.messages[0].expiry == 72 * 3600  # counted down on the packer's clock


sessions = st.sampled_from([None, "a", "b"])
records = st.lists(
    st.tuples(sessions, st.booleans(), st.integers(0, 400), st.booleans()), max_size=60
)


@settings(max_examples=150, deadline=None)
@given(records, st.integers(40, 2000), st.integers(1, 40))
def test_every_record_goes_exactly_once_in_messages_that_fit_and_share_a_stream(
    spec: list[tuple[str | None, bool, int, bool]], limit: int, max_batch: int
) -> None:
    items: list[Item] = []
    for seq, (session, drill, pad, start) in enumerate(spec, 1):
        if session and start:
            items.append(lifecycle(seq, RecordKind.SOS_START, session))
        else:
            items.append(fix(seq, session, drill=drill, pad=pad))
    packed = pack(items, limit=limit, max_batch=max_batch)
    sent = [s for m in packed.messages for s in m.seqs]
    assert sorted(sent) == [s.seq for s in items]  # each once, none lost
    assert {m.msg_id for m in packed.new} <= {m.msg_id for m in packed.messages}
    for m in packed.messages:
        assert len(m.payload) <= limit or len(m.seqs) == 1
        assert m.seqs == sorted(m.seqs)
        first = m.records[0]
        if first.kind in SOS_KINDS:
            assert len(m.records) == 1 and m.topic == TOPICS.sos
            continue
        assert len(m.seqs) <= max_batch and m.topic == TOPICS.track
        assert {(r.session, r.drill, r.expires) for r in m.records} == {
            (first.session, first.drill, first.expires)
        }
        assert [g.seq for g in decode_track(m.payload)] == m.seqs  # what a receiver reads
    order = [(m.records[0].priority, m.records[0].seq) for m in packed.messages]
    assert order == sorted(order)


def test_the_size_limit_learns_from_connack_puback_and_stalls() -> None:
    lim = SizeLimit(16 * 1024)
    lim.connected(maximum_packet=8192)
    assert lim.max_bytes == 8192 - 1024  # room for the headers
    lim.too_large(6000)
    assert lim.max_bytes == 3000
    assert lim.fits(2999, 5) and not lim.fits(3001, 5) and lim.fits(10_000, 1)
    for _ in range(2):  # two connections lost with a large message out, none answered
        lim.connected(None)
        lim.sent(2500)
        lim.connection_ended()
    assert lim.max_bytes == 1250
    lim.connected(None)
    lim.sent(1200)
    lim.acknowledged()  # answered: not a stall
    lim.connection_ended()
    lim.connected(None)
    lim.sent(1200)
    lim.connection_ended()
    assert lim.max_bytes == 1250
    lim.too_large(100)
    assert lim.max_bytes == 512  # never below the floor
