"""Bytes in, fixes out: framer + sentence validation + epoch merger, with counters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime

from sosbeacon.device.gps import Fix, GpsStats
from sosbeacon.hw.nmea.epoch import DEFAULT_DATE_FLOOR, EpochMerger
from sosbeacon.hw.nmea.framer import NmeaFramer
from sosbeacon.hw.nmea.sentences import Reject, split_sentence

log = logging.getLogger(__name__)


class NmeaDecoder:
    """The whole NMEA path minus the wire, so the serial source, the decode command and
    the tests share one implementation."""

    def __init__(
        self,
        *,
        date_floor: date = DEFAULT_DATE_FLOOR,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
        stats: GpsStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else GpsStats()
        self._framer = NmeaFramer()
        self._merger = EpochMerger(date_floor=date_floor, today=today)

    def feed(self, data: bytes, received: float | None = None) -> list[Fix]:
        st = self.stats
        st.bytes += len(data)
        noise_before = self._framer.garbage_bytes
        fixes: list[Fix] = []
        for raw in self._framer.feed(data):
            fixes.extend(self._sentence(raw, received))
        # Add, never assign: the stats may outlive this decoder (one per reconnect).
        st.noise_bytes += self._framer.garbage_bytes - noise_before
        return self._count(fixes)

    def flush(self, received: float | None = None) -> list[Fix]:
        """Close the epoch in progress: call when the line has been idle, or at EOF."""
        fixes: list[Fix] = []
        for raw in self._framer.flush():
            fixes.extend(self._sentence(raw, received))
        fixes.extend(self._merger.flush(received))
        return self._count(fixes)

    def _sentence(self, raw: bytes, received: float | None) -> list[Fix]:
        st = self.stats
        s = split_sentence(raw)
        if isinstance(s, Reject):
            if s is Reject.UNKNOWN:
                st.sentences += 1
                st.unknown += 1
            elif s is Reject.BAD_CHECKSUM:
                st.bad_checksum += 1
                log.debug("bad checksum: %r", raw[:100])
            else:
                st.garbage += 1
            return []
        st.sentences += 1
        return self._merger.feed(s, received)

    def _count(self, fixes: list[Fix]) -> list[Fix]:
        self.stats.epochs += len(fixes)
        self.stats.fixes += sum(1 for f in fixes if f.has_position)
        return fixes
