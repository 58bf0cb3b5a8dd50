"""The relay's tables (SQLAlchemy 2 Core) and the engine for SQLite or PostgreSQL.

One schema, one set of queries for both: SQLite (aiosqlite, WAL, ``synchronous=FULL``)
is the embedded default; PostgreSQL (asyncpg) is what several relays share. What is kept
and for how long is in ``docs/relay.md``: a session's route, events, contacts and links
are deleted when its 72 hours are over; only the hash of each link stays, so that it can
answer 410 Gone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SCHEMA_VERSION = 1
metadata = MetaData()

#: per device outbox: the seq ranges received (the ledger) and removed by gap notices
boxes = Table(
    "boxes",
    metadata,
    Column("box", String(64), primary_key=True),
    Column("device", String(128), nullable=False),
    Column("seen", JSON, nullable=False),  # [[first, last], ...]
    Column("removed", JSON, nullable=False),
    Column("duplicates", BigInteger, nullable=False, default=0),
    Column("updated", Float, nullable=False),
)

#: one SOS (or drill) session of one device
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", String(128), nullable=False),
    Column("sess", String(64), nullable=False),
    Column("box", String(64)),
    Column("drill", Boolean, nullable=False, default=False),
    #: the device's times of its start and end records
    Column("started", Float),
    Column("ended", Float),
    Column("end_reason", Text),
    #: when the route expires (``exp`` of sos-end): the links answer 410 after it
    Column("expires", Float),
    Column("start", JSON),  # the sos-start data, without the contacts' addresses
    Column("owner", Text),
    Column("received", Float, nullable=False),  # relay clock: when first heard of
    Column("stored_at", Float),  # relay clock: when the sos-start was stored
    UniqueConstraint("device", "sess"),
)

#: every record of a session, de-duplicated by (box, seq)
records = Table(
    "records",
    metadata,
    Column("box", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE")),
    Column("kind", String(32), nullable=False),
    Column("at", Float, nullable=False),  # the device's time of the record
    Column("lat", Float),
    Column("lon", Float),
    Column("acc", Float),
    Column("alt", Float),
    Column("spd", Float),
    Column("crs", Float),
    Column(
        "data", JSON(none_as_null=True)
    ),  # what has no column (a battery sample, an event's details)
    Column("received", Float, nullable=False),
)
Index("records_session_t", records.c.session_id, records.c.kind, records.c.at)

#: one capability link per contact of a session
links = Table(
    "links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("contact", Integer, nullable=False),  # position in the sos-start's contacts
    Column("name", Text, nullable=False),
    Column("salt", LargeBinary(16), nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("revoked", Float),
    Column("first_opened", Float),
    Column("last_opened", Float),
    Column("opens", Integer, nullable=False, default=0),
    UniqueConstraint("session_id", "contact"),
)

#: every time a link was opened (the page, not its live updates)
opens = Table(
    "opens",
    metadata,
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
)

#: one notification of one contact on one channel: sent once per session and kind
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),  # "start" | "end"
    Column("channel", String(32), nullable=False),  # email, sms, tgram, ...
    Column("address", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | sending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try", Float, nullable=False),
    Column("claimed_by", String(128)),
    Column("error", Text),
    Column("sent_at", Float),
    UniqueConstraint("link_id", "kind", "channel", "address"),
)
Index("notifications_due", notifications.c.state, notifications.c.next_try)

#: "I'm on it" from a page: the command sent to the device, and its confirmation
acks = Table(
    "acks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    Column("cmd_id", String(64), nullable=False, unique=True),
    Column("requested", Float, nullable=False),
    Column("confirmed", Float),
    Column("error", Text),
)

#: a session's voice notes, whole (joined from their chunks, checked against the hash)
voices = Table(
    "voices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", Integer, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("clip", String(64), nullable=False),
    Column("mime", String(64), nullable=False),
    Column("seconds", Float, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    #: why it was recorded: "sos-start", "voice-now:<contact>"
    Column("why", Text),
    #: the device's time of its first chunk, and when the relay had it whole
    Column("at", Float, nullable=False),
    Column("received", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),
    UniqueConstraint("session_id", "clip"),
)

#: links whose session was deleted or that were revoked: only the hash, to answer 410
gone = Table(
    "gone",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("at", Float, nullable=False),
)

meta = Table(
    "relay_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, ``synchronous=FULL``, ``secure_delete``
    and foreign
    keys on every connection (a stored record survives a power cut)."""
    if url.startswith("sqlite"):
        eng = create_async_engine(url, **kwargs)
        event.listen(eng.sync_engine, "connect", _pragmas)
        return eng
    return create_async_engine(url, pool_size=10, max_overflow=10, **kwargs)


def sqlite_sync_engine(eng: AsyncEngine) -> Engine | None:
    """For an SQLite ``eng``, a plain engine on the same file with the same pragmas (None
    for any other database). A transaction of several statements runs on it in one
    worker thread: through aiosqlite every statement costs several hops between the
    event loop and its thread, about four times the CPU of the statement itself."""
    if eng.dialect.name != "sqlite":
        return None
    sync = create_engine(eng.url.set(drivername="sqlite+pysqlite"))
    event.listen(sync, "connect", _pragmas)
    return sync


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    # a session deleted at its 72 hours is overwritten, not only unlinked
    cur.execute("PRAGMA secure_delete=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


async def create(eng: AsyncEngine) -> None:
    """Create the tables that are missing (several relays may race here on PostgreSQL:
    an advisory lock makes it one at a time)."""
    async with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        await conn.run_sync(metadata.create_all)
