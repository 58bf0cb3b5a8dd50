"""The relay's ledger, kept as seq ranges in its database, proves what
``device.wire.SeqLedger`` proves: the same duplicates, the same removed seqs, the same
holes, for any order of arrival."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sosbeacon.device.wire import Received, SeqLedger
from sosbeacon.relay import ranges


def record(seq: int, gap: list[list[int]] | None = None) -> Received:
    if gap is None:
        return Received("box", seq, "fix", 0.0, {"fix": {"lat": 0, "lon": 0}})
    return Received("box", seq, "gap", 0.0, {"ranges": gap, "reason": "evicted"})


arrivals = st.lists(
    st.tuples(
        st.integers(1, 300),
        st.one_of(
            st.none(), st.lists(st.tuples(st.integers(1, 300), st.integers(0, 20)), max_size=3)
        ),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(arrivals, st.integers(1, 50))
def test_the_range_ledger_agrees_with_seq_ledger(
    items: list[tuple[int, list[tuple[int, int]] | None]], batch: int
) -> None:
    recs = [record(seq, None if g is None else [[a, a + n] for a, n in g]) for seq, g in items]
    reference = SeqLedger()
    reference.add(recs)
    seen: ranges.Ranges = []
    removed: ranges.Ranges = []
    dups = 0
    for i in range(0, len(recs), batch):  # as messages arrive, several per transaction
        got = ranges.take(seen, removed, recs[i : i + batch])
        seen, removed, dups = got.seen, got.removed, dups + got.duplicates
    assert dups == reference.duplicates
    assert ranges.count(seen) == len(reference.seen)
    assert {s for a, b in seen for s in range(a, b + 1)} == reference.seen
    assert {s for a, b in removed for s in range(a, b + 1)} == reference.removed
    holes = {s for a, b in ranges.holes(seen, removed) for s in range(a, b + 1)}
    assert holes == set(reference.missing())


def test_gap_ranges_from_the_wire_are_taken_only_when_well_formed() -> None:
    assert ranges.pairs([[1, 3], [5, 2], ["a", 1], [True, 2], [0, 1], 7, [2**60, 2**60]]) == [
        [1, 3]
    ]
    assert ranges.pairs("1-3") == [] and ranges.pairs(None) == []
