"""Bytes in, fixes out: framer + sentence validation + epoch merger, with counters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime

from sosbeacon.device.gps import Fix, GpsStats
from sosbeacon.hw.nmea.epoch import DEFAULT_DATE_FLOOR, EpochMerger
from sosbeacon.hw.nmea.framer import NmeaFramer
from sosbeacon.hw.nmea.sentences import Reject, Sentence, split_sentence

log = logging.getLogger(__name__)

#: sentences remembered with their verdict: a receiver repeats many lines byte for byte
#: from one epoch to the next (a GSA while the same satellites are used, a GSV while a
#: beacon lies still, an instrument's heading), and a repeat then costs one dict lookup
#: instead of a checksum and a split (about a third of the real corpus, ``make bench``)
REPEATS = 64


class NmeaDecoder:
    """The whole NMEA path minus the wire, so the serial source, the decode command and
    the tests share one implementation."""

    def __init__(
        self,
        *,
        date_floor: date = DEFAULT_DATE_FLOOR,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
        stats: GpsStats | None = None,
        repeats: int = REPEATS,
    ) -> None:
        self.stats = stats if stats is not None else GpsStats()
        self._framer = NmeaFramer()
        self._merger = EpochMerger(date_floor=date_floor, today=today)
        self._repeats = repeats
        #: the last sentences and their verdicts (:func:`split_sentence` is pure; the
        #: merger only reads a :class:`Sentence`), cleared when ``repeats`` are held
        self._seen: dict[bytes, Sentence | Reject] = {}

    def feed(self, data: bytes, received: float | None = None) -> list[Fix]:
        self.stats.bytes += len(data)
        noise_before = self._framer.garbage_bytes
        fixes = self._sentences(self._framer.feed(data), received)
        # Add, never assign: the stats may outlive this decoder (one per reconnect).
        self.stats.noise_bytes += self._framer.garbage_bytes - noise_before
        return self._count(fixes)

    def flush(self, received: float | None = None) -> list[Fix]:
        """Close the epoch in progress: call when the line has been idle, or at EOF."""
        fixes = self._sentences(self._framer.flush(), received)
        fixes.extend(self._merger.flush(received))
        return self._count(fixes)

    def _sentences(self, candidates: list[bytes], received: float | None) -> list[Fix]:
        """Validate and merge framed candidates (one loop, the counters kept in locals
        and added once: this runs for every sentence a receiver sends)."""
        fixes: list[Fix] = []
        merge = self._merger.feed
        good = unknown = bad = garbage = 0
        seen, room = self._seen, self._repeats
        for raw in candidates:
            s = seen.get(raw)
            if s is None:
                s = split_sentence(raw)
                if room:
                    if len(seen) >= room:
                        seen.clear()
                    seen[raw] = s
            if type(s) is Sentence:
                good += 1
                found = merge(s, received)
                if found:
                    fixes.extend(found)
            elif s is Reject.UNKNOWN:
                unknown += 1
            elif s is Reject.BAD_CHECKSUM:
                bad += 1
                log.debug("bad checksum: %r", raw[:100])
            else:
                garbage += 1
        st = self.stats
        st.sentences += good + unknown
        st.unknown += unknown
        st.bad_checksum += bad
        st.garbage += garbage
        return fixes

    def _count(self, fixes: list[Fix]) -> list[Fix]:
        self.stats.epochs += len(fixes)
        self.stats.fixes += sum(1 for f in fixes if f.has_position)
        return fixes
