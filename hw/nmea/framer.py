"""Byte stream → candidate NMEA sentences.

Real receivers start mid-sentence at power-up, interleave binary protocol frames (u-blox
UBX, SiRF) with NMEA, glue two sentences on one line and drop line ends. The framer's one
job is to cut the stream so that none of that costs the *next* good sentence: every ``$``
or ``!`` starts a new candidate, whatever came before it, and a candidate ends at CR or LF.
Anything that is not inside a candidate is counted as garbage and thrown away.
"""

from __future__ import annotations

import re

#: NMEA 0183 caps a sentence at 82 characters; some receivers (and proprietary
#: sentences) run longer, so allow generous room before calling it garbage.
MAX_SENTENCE = 160

#: a start character, then everything up to (not including) a line end or next start
_CANDIDATE = re.compile(rb"[$!][^\r\n$!]*")


class NmeaFramer:
    """Incremental framer; feed it any chunking of the byte stream."""

    __slots__ = ("_buf", "garbage_bytes")

    def __init__(self) -> None:
        self._buf = b""
        #: bytes discarded because they were outside any candidate sentence
        self.garbage_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete candidates in ``data`` (without line ends), in order."""
        buf = self._buf + data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        for m in _CANDIDATE.finditer(buf):
            start, end = m.span()
            if start > pos:
                self.garbage_bytes += _noise(buf, pos, start)
            if end == n:
                # No terminator yet: keep it for the next chunk unless already too long.
                if end - start > MAX_SENTENCE:
                    self.garbage_bytes += end - start
                    pos = n
                else:
                    pos = start
                break
            if end - start <= MAX_SENTENCE:
                out.append(m.group())
            else:
                self.garbage_bytes += end - start
            pos = end
        else:
            # Only garbage (or line ends) after the last candidate.
            self.garbage_bytes += _noise(buf, pos, n)
            pos = n
        self._buf = buf[pos:]
        return out

    def flush(self) -> list[bytes]:
        """End of stream: a trailing candidate without line end still counts (it will be
        rejected later if its checksum is missing)."""
        rest, self._buf = self._buf, b""
        return [rest] if rest[:1] in (b"$", b"!") else []


def _noise(buf: bytes, start: int, end: int) -> int:
    """Bytes in ``buf[start:end]`` that are not line ends."""
    gap = buf[start:end]
    return len(gap) - gap.count(b"\r") - gap.count(b"\n")
