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
        # What is complete: everything up to the last line end, and after it whatever
        # comes before the last start character (a start ends the candidate before it).
        cut = max(buf.rfind(b"\r"), buf.rfind(b"\n")) + 1
        start = max(buf.rfind(b"$", cut), buf.rfind(b"!", cut))
        if start < 0:
            done, self._buf = buf, b""
        else:
            done, self._buf = buf[:start], buf[start:]
            if len(self._buf) > MAX_SENTENCE:  # no terminator yet, and already too long
                self.garbage_bytes += len(self._buf)
                self._buf = b""
        out = [c for c in _CANDIDATE.findall(done) if len(c) <= MAX_SENTENCE]
        # Candidates hold no line ends; everything else that is not in one is garbage
        # (the bytes between candidates, and whole candidates that ran too long).
        self.garbage_bytes += len(done) - done.count(b"\r") - done.count(b"\n") - sum(map(len, out))
        return out

    def flush(self) -> list[bytes]:
        """End of stream: a trailing candidate without line end still counts (it will be
        rejected later if its checksum is missing)."""
        rest, self._buf = self._buf, b""
        return [rest] if rest[:1] in (b"$", b"!") else []
