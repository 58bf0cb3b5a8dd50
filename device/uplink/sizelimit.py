"""How large a message may be: one object, learning from the broker three ways.

* The CONNACK's Maximum Packet Size (less room for the headers).
* A PUBACK "packet too large" (0x95): the cap halves below that message's size, at
  the PUBACK itself (Mosquitto may drop the connection right after it).
* Some brokers drop the connection instead of answering (Mosquitto's
  ``message_size_limit``), and the same message would be resent forever: two
  connections in a row that ended with nothing acknowledged while a large message was
  out halve the cap too.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__package__)

#: PUBACK reason code: the packet was larger than the broker accepts
PACKET_TOO_LARGE = 0x95
#: never below this
FLOOR = 512


class SizeLimit:
    def __init__(self, configured: int) -> None:
        #: the largest payload a message may have now
        self.max_bytes = configured
        self._stalls = 0
        self._acks = 0
        self._largest = 0

    def fits(self, nbytes: int, records: int) -> bool:
        """Within the cap, or a single record (which cannot be split)."""
        return nbytes <= self.max_bytes or records == 1

    def connected(self, maximum_packet: int | None) -> None:
        """A new connection, and what its CONNACK allows."""
        if maximum_packet:
            self.max_bytes = min(self.max_bytes, maximum_packet - 1024)
        self._acks = self._largest = 0

    def sent(self, nbytes: int) -> None:
        self._largest = max(self._largest, nbytes)

    def acknowledged(self) -> None:
        self._acks += 1

    def too_large(self, nbytes: int) -> None:
        """The broker refused a message of ``nbytes`` for its size."""
        self.max_bytes = max(FLOOR, min(self.max_bytes, nbytes) // 2)
        log.warning(
            "the broker found a %d-byte message too large; sending smaller ones (at most %d bytes)",
            nbytes,
            self.max_bytes,
        )

    def connection_ended(self) -> None:
        """A connection ended: a stall (nothing acknowledged with a large message out)
        twice in a row halves the cap."""
        if self._acks or self._largest <= 1024:
            self._stalls = 0
            return
        self._stalls += 1
        if self._stalls >= 2:
            self._stalls = 0
            self.max_bytes = max(1024, min(self.max_bytes, self._largest) // 2)
            log.warning(
                "two connections in a row were lost with a %d-byte message unacknowledged; "
                "sending smaller messages (at most %d bytes)",
                self._largest,
                self.max_bytes,
            )
