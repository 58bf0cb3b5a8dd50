"""The durable outbox: every record the device promised to deliver, on disk until the
broker acknowledged it.

* SQLite in WAL mode with ``synchronous=FULL``: a committed record survives power loss.
* Each record gets its ``seq`` inside the transaction that stores it: device-wide,
  strictly increasing, gap-free, never reused.
* Upload order: priority (SOS and last gasp, then live positions, then routine), then
  ``seq``. A record leaves only through :meth:`Outbox.ack`; whatever was handed out and
  not acknowledged returns to pending on :meth:`Outbox.requeue` (reconnect) and on open.
* Message ids: the uplink packs records into messages and :meth:`Outbox.bind` stores
  each message's id with its records *before* the message is sent, so a resend after a
  reconnect or a restart carries the same id.
* A full disk never fails an SOS: writes wait in memory until there is room; nothing
  already stored is lost. A corrupt database is salvaged into a fresh one and moved
  aside, never deleted.

One job per module:

=================  ===================================================================
``box``            :class:`Outbox`, the front: the only API the rest of the device uses
``schema``         tables, pragmas, migrations, row states, the seq counter
``opening``        opening the file: faults told apart, locks waited for, reserves
``salvage``        reading what is readable of a corrupt file into a fresh one
``writer``         the writer thread: group commit, light transactions, checkpoints
``reader``         the reader thread: what to send next, as runs of fixes
``handout``        the in-flight ledger and its lock
``capacity``       limits, eviction, gap records, the row count
``holding``        what waits in memory while the disk is full
``state``          the device's typed values beside the records, and the session mark
``faults``         what a storage error means; disk space kept in reserve
``errors``         :class:`OutboxError` and its kinds (never SQLite's own)
``testing``        a probe for tests (faults on demand, the kept counts): not for sosd
=================  ===================================================================
"""

from sosbeacon.device.outbox.box import Outbox, OutboxStats, Pending
from sosbeacon.device.outbox.capacity import Limits
from sosbeacon.device.outbox.errors import OutboxError, OutboxFull, OutboxUnavailable
from sosbeacon.device.outbox.schema import SCHEMA_VERSION
from sosbeacon.device.outbox.state import (
    ACTIVE_SESSION,
    OWNTRACKS_LAST,
    RETAINED_SOS_SEQ,
    SMS_LOG,
    DeviceState,
    Key,
    SessionMark,
)

__all__ = [
    "ACTIVE_SESSION",
    "OWNTRACKS_LAST",
    "RETAINED_SOS_SEQ",
    "SCHEMA_VERSION",
    "SMS_LOG",
    "DeviceState",
    "Key",
    "Limits",
    "Outbox",
    "OutboxError",
    "OutboxFull",
    "OutboxStats",
    "OutboxUnavailable",
    "Pending",
    "SessionMark",
]
