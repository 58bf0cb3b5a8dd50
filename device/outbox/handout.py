"""The hand-out ledger: which records are in flight (handed out by ``take``, neither
acknowledged nor requeued yet), where each priority's next ``take`` starts, and which
acknowledgements could not be committed yet. It is the only owner of that state and of
the lock over it.

The lock (:attr:`Handout.lock`, re-entrant) is held over a whole take, its read
included, and over every write that takes records away undelivered (eviction, expiry,
wipe): the reader and writer threads then never hand out a record twice, nor evict one
being handed out. In flight is kept in memory, not in the table: after a restart nothing
is in flight anyway.

It also keeps the urgent records just committed (:meth:`Handout.committed`), so a take
of SOS records and live positions can hand them out without reading them back in the
reader thread (:meth:`Handout.take_fresh`): one thread hop less on the way of an SOS.
That is allowed only for a priority whose pending records, beyond its cursor, are all
known to be among them: the last take of it read everything pending (its snapshot
began after every record registered before it, so what is registered later may or may
not have been seen, and is skipped by the cursor if it was), no kept record of it was
let go while that take ran (past the cap), and nothing moved its cursor back or took
records away since (a requeue, a withdrawal: eviction, expiry, wipe). Anything else, and
the take reads the table as always.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sosbeacon.device.records import Priority, Stored

#: the priorities a take may hand out from memory (SOS events, live positions)
FRESH = (int(Priority.SOS), int(Priority.LIVE))
#: kept per priority at most; past it, the next take reads the table
_FRESH_CAP = 64


class Handout:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._inflight: set[int] = set()
        #: by priority: every record not delivered up to this seq is in flight, so take()
        #: starts after it; a requeue moves it back
        self._taken: dict[int, int] = {}
        #: acknowledged by the broker, the deletion not committed yet (a full disk):
        #: never handed out again, even after a requeue
        self._unsaved: set[int] = set()
        #: urgent records just committed, by priority, with the count of registrations
        #: before each (under ``_fresh_lock``: the writer registers without the lock)
        self._fresh_lock = threading.Lock()
        self._fresh: dict[int, list[tuple[int, Stored]]] = {p: [] for p in FRESH}
        self._registered = 0
        #: the priorities whose pending records beyond the cursor are all in ``_fresh``
        self._known: set[int] = set()
        #: by priority: the registration count when its kept records were last let go
        self._dropped: dict[int, int] = {}

    def after(self, priority: int) -> int:
        """The seq the next take of ``priority`` starts after (under the lock)."""
        return self._taken.get(priority, 0)

    def cursors(self) -> dict[int, int]:
        with self.lock:
            return dict(self._taken)

    def advance(self, priority: int, seq: int) -> None:
        """A take of ``priority`` read up to ``seq`` (under the lock)."""
        self._taken[priority] = seq

    def out(self, seq: int) -> bool:
        """Whether ``seq`` is in flight."""
        return seq in self._inflight

    def hand(self, seqs: Iterable[int]) -> None:
        """``seqs`` were handed out (under the lock, at the end of the take)."""
        self._inflight.update(seqs)

    def settle(self, seqs: Iterable[int]) -> None:
        """``seqs`` left the table (acknowledged, expired), committed: no longer in flight."""
        with self.lock:
            gone = set(seqs)
            self._inflight.difference_update(gone)
            with self._fresh_lock:
                for p, items in self._fresh.items():
                    if items:
                        self._fresh[p] = [x for x in items if x[1].seq not in gone]

    def back(self, seqs: list[int] | None) -> None:
        """Requeue: ``seqs`` (a failure reason code), or everything (a reconnect), are
        pending again and the next take reads from the earliest of them."""
        with self.lock:
            if seqs is None:
                self._inflight = set(self._unsaved)
                self._taken.clear()
                self._known.clear()
            elif seqs:
                self._inflight.difference_update(seqs)
                back = min(seqs) - 1
                for p, after in self._taken.items():
                    if back < after:
                        self._taken[p] = back
                        self._known.discard(p)

    def reset(self) -> None:
        """Everything was deleted (a wipe)."""
        with self.lock:
            self._inflight.clear()
            self._taken.clear()
            self.unknown(*FRESH)

    # -- urgent records just committed -------------------------------------------------

    def committed(self, stored: Iterable[Stored]) -> None:
        """In the writer thread, once ``stored`` is committed: the urgent ones are kept
        for :meth:`take_fresh`."""
        with self._fresh_lock:
            for s in stored:
                items = self._fresh.get(s.priority)
                if items is None:
                    continue
                if len(items) >= _FRESH_CAP:
                    items.clear()  # nobody takes them (offline): the table has them
                    self._known.discard(s.priority)
                    self._dropped[s.priority] = self._registered
                items.append((self._registered, s))
                self._registered += 1

    def registered(self) -> int:
        """How many records were registered so far: a take notes it before its snapshot
        begins, for :meth:`read_all`."""
        with self._fresh_lock:
            return self._registered

    def read_all(self, priority: int, before: int) -> None:
        """A take (under the lock) read every pending record of ``priority`` in a
        snapshot that began after ``before`` registrations: those registered earlier
        were in it, and are behind the cursor now. Unless the writer let records of
        it go since (:meth:`committed`, past the cap): some of those may have been
        committed after the snapshot began, and only the table has them."""
        with self._fresh_lock:
            items = self._fresh.get(priority)
            if items is not None:
                self._fresh[priority] = [x for x in items if x[0] >= before]
                if self._dropped.get(priority, 0) <= before:
                    self._known.add(priority)

    def unknown(self, *priorities: int) -> None:
        """Records of ``priorities`` were written, or made pending, past this ledger (a
        gap record, a wipe): the next take of them reads the table."""
        with self._fresh_lock:
            for p in priorities:
                self._known.discard(p)
                if p in self._fresh:
                    self._fresh[p] = []
                    self._dropped[p] = self._registered

    def take_fresh(self, limit: int, first: int, last: int, run: int) -> list[Stored] | None:
        """The take :func:`device.outbox.reader.hand_out` would make, from the urgent
        records just committed, or ``None`` when that cannot be known without reading
        the table (a priority not known, more than ``limit`` records, two fixes that
        might form one run of at most ``run``, or the lock held by a take in the reader
        thread: this runs in the event loop and never waits)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            with self._fresh_lock:
                picked: list[tuple[int, list[Stored]]] = []
                for p in range(first, last + 1):
                    if p not in self._known:
                        return None
                    after = self._taken.get(p, 0)
                    items = [s for _, s in self._fresh[p] if s.seq > after]
                    picked.append((p, [s for s in items if s.seq not in self._inflight]))
                out = [s for _, items in picked for s in items]
                if len(out) > limit or (run > 1 and sum(s.row is not None for s in out) > 1):
                    return None
                for p, items in picked:
                    self._fresh[p] = []
                    if items:
                        self._taken[p] = max(self._taken.get(p, 0), items[-1].seq)
                self._inflight.update(s.seq for s in out)
                return out
        finally:
            self.lock.release()

    def unsaved(self, seqs: Iterable[int]) -> None:
        """Acknowledged, the deletion not committed (a full disk): kept in flight."""
        with self.lock:
            self._unsaved.update(seqs)

    def unsaved_acks(self) -> list[int]:
        with self.lock:
            return sorted(self._unsaved)

    def saved(self, seqs: Iterable[int]) -> None:
        with self.lock:
            self._unsaved.difference_update(seqs)

    def __len__(self) -> int:
        return len(self._inflight)
