"""The hand-out ledger: which records are in flight (handed out by ``take``, neither
acknowledged nor requeued yet), where each priority's next ``take`` starts, and which
acknowledgements could not be committed yet. It is the only owner of that state and of
the lock over it.

The lock (:attr:`Handout.lock`, re-entrant) is held over a whole take, its read
included, and over every write that takes records away undelivered (eviction, expiry,
wipe): the reader and writer threads then never hand out a record twice, nor evict one
being handed out. In flight is kept in memory, not in the table: after a restart nothing
is in flight anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


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
            self._inflight.difference_update(seqs)

    def back(self, seqs: list[int] | None) -> None:
        """Requeue: ``seqs`` (a failure reason code), or everything (a reconnect), are
        pending again and the next take reads from the earliest of them."""
        with self.lock:
            if seqs is None:
                self._inflight = set(self._unsaved)
                self._taken.clear()
            elif seqs:
                self._inflight.difference_update(seqs)
                back = min(seqs) - 1
                for p, after in self._taken.items():
                    self._taken[p] = min(after, back)

    def reset(self) -> None:
        """Everything was deleted (a wipe)."""
        with self.lock:
            self._inflight.clear()
            self._taken.clear()

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
