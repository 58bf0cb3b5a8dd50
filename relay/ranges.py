"""Sets of seqs kept as sorted, disjoint, inclusive ranges ``[[first, last], ...]``: what a
relay has received from one outbox fits in a few pairs however long the route, and a
merge costs the number of ranges, not of seqs."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sosbeacon.device.wire import MAX_SEQ, Received, seq_ranges
from sosbeacon.device.wire import gap_ranges as pairs
from sosbeacon.device.wire import ranges_text as text

Ranges = list[list[int]]


def merge(a: Sequence[Sequence[int]], b: Iterable[Sequence[int]]) -> Ranges:
    """The union of two range lists (each sorted or not), adjacent ranges joined."""
    items = sorted([list(r) for r in a] + [list(r) for r in b])
    out: Ranges = []
    for first, last in items:
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


def contains(ranges: Sequence[Sequence[int]], seq: int) -> bool:
    i = bisect.bisect_right(ranges, seq, key=lambda r: r[0]) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def of(seqs: Iterable[int]) -> Ranges:
    return [[a, b] for a, b in seq_ranges(seqs)]


def holes(seen: Sequence[Sequence[int]], removed: Sequence[Sequence[int]]) -> Ranges:
    """The seqs from 1 to the highest seen that are neither seen nor removed: records
    still on the way (or lost)."""
    accounted = merge(seen, removed)
    top = max((r[1] for r in seen), default=0)
    out: Ranges = []
    nxt = 1
    for first, last in accounted:
        if first > nxt:
            out.append([nxt, min(first - 1, top)])
        nxt = max(nxt, last + 1)
        if nxt > top:
            break
    return [r for r in out if r[0] <= r[1]]


def count(ranges: Sequence[Sequence[int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)


@dataclass
class Taken:
    """What one outbox's ledger makes of a batch of records."""

    fresh: list[Received]
    seen: Ranges
    removed: Ranges
    duplicates: int


def take(seen: Ranges, removed: Ranges, recs: Iterable[Received]) -> Taken:
    """The receiver's proof of no loss (as :class:`device.wire.SeqLedger`), kept as
    ranges: a record whose seq was seen before is a duplicate; a gap notice's ranges are
    removed on purpose; every other seq up to the highest seen that is neither seen nor
    removed is a hole (:func:`holes`)."""
    fresh: list[Received] = []
    taken: set[int] = set()
    dups = 0
    for r in recs:
        if not isinstance(r.seq, int) or not 1 <= r.seq <= MAX_SEQ:
            dups += 1  # not a seq at all: counted with the duplicates, never stored
            continue
        if r.seq in taken or contains(seen, r.seq):
            dups += 1
            continue
        taken.add(r.seq)
        fresh.append(r)
        if r.kind == "gap":
            removed = merge(removed, pairs(r.data.get("ranges")))
    return Taken(fresh, merge(seen, of(taken)), removed, dups)


__all__ = [
    "Ranges", "Taken", "contains", "count", "holes", "merge", "of", "pairs", "take", "text",
]  # fmt: skip
