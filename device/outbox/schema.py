"""The outbox's tables, pragmas and migrations, and the small SQL every part shares
(a write transaction, the seq counter, a record's message id).

Row states are :data:`PENDING` and :data:`DELIVERED`; every statement names them through
these constants (version 0 also wrote :data:`IN_FLIGHT`, which opening turns back into
pending)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

from sosbeacon.device.wire import seq_ranges

log = logging.getLogger(__name__)

#: ``records.state`` (1, in flight, was written by version 0)
PENDING, IN_FLIGHT, DELIVERED = 0, 1, 2

#: the message id of records first..last (Outbox.bind): one row per message, so naming a
#: message never rewrites its records
_BINDINGS = """
CREATE TABLE IF NOT EXISTS bindings (
    first  INTEGER PRIMARY KEY,
    last   INTEGER NOT NULL,
    msg_id TEXT NOT NULL
);
"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    time     TEXT NOT NULL,
    session  TEXT,
    drill    INTEGER NOT NULL,
    data     TEXT NOT NULL,
    expires  REAL,
    -- {PENDING} not delivered, {DELIVERED} delivered (kept until its session expires)
    state    INTEGER NOT NULL DEFAULT {PENDING},
    -- a fix as its track row (device.wire.track_row): time ms, lat and lon micro-degrees,
    -- the rest as JSON text; NULL for anything else
    row_t    INTEGER,
    row_lat  INTEGER,
    row_lon  INTEGER,
    row_tail TEXT,
    -- the fix before it in its stream (priority, session, drill, expiry), when stored,
    -- and this row as its difference from that one (device.wire.row_delta)
    row_prev  INTEGER,
    row_delta TEXT,
    -- when this outbox committed it, by the device's clock (seconds since the epoch):
    -- what batching and expiry countdowns measure ages from, never the receiver's time
    committed REAL
);
CREATE INDEX IF NOT EXISTS records_order ON records (state, priority, seq);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session) WHERE session IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, expires REAL NOT NULL);
{_BINDINGS}"""
#: ``PRAGMA user_version`` of the schema above; older outboxes are brought up to it
SCHEMA_VERSION = 4


def pragmas(db: sqlite3.Connection, journal_limit: int) -> None:
    """The writing connection's settings: WAL, every commit durable, checkpoints by the
    outbox's own thread (never inside a commit), the WAL cut back to ``journal_limit``."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(f"PRAGMA journal_size_limit={journal_limit}")
    db.execute("PRAGMA busy_timeout=5000")  # a checkpoint of its own may wait
    # what is deleted (a route at its 72 hours, a purge) is overwritten with zeros, not
    # only unlinked from the b-tree (the old pages in the WAL go at the next truncation)
    db.execute("PRAGMA secure_delete=ON")


def migrate(db: sqlite3.Connection, now: datetime) -> None:
    """Bring the tables up to :data:`SCHEMA_VERSION` (creating them in a new file)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and has_table(db, "records"):
        _migrate_from_0(db)
        version = 1
    if version == 1:
        _migrate_from_1(db)
        version = 2
    if version == 2:
        _migrate_from_2(db, now)
        version = 3
    if version == 3:
        _migrate_from_3(db)
    db.executescript(SCHEMA)
    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def tidy(db: sqlite3.Connection) -> None:
    """After a restart nothing is in flight (version 0 marked it in the table), and names
    of messages whose records are all gone (delivered, expired, purged) are dropped.
    Neither is needed to run: on a full disk they wait for the next start."""
    with contextlib.suppress(sqlite3.OperationalError):
        db.execute(f"UPDATE records SET state={PENDING} WHERE state={IN_FLIGHT}")
        db.execute(
            "DELETE FROM bindings WHERE NOT EXISTS (SELECT 1 FROM records "
            f"WHERE seq BETWEEN bindings.first AND bindings.last AND state<{DELIVERED})"
        )


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed if the block ends normally, else rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def get_seq(db: sqlite3.Connection) -> int:
    """The highest seq ever given (kept apart from the records: deleting delivered ones
    never brings an old number back)."""
    row = db.execute("SELECT value FROM counters WHERE name='seq'").fetchone()
    return int(row[0]) if row else 0


def set_seq(db: sqlite3.Connection, seq: int) -> None:
    db.execute(
        "INSERT INTO counters VALUES ('seq', ?) ON CONFLICT(name) DO UPDATE "
        "SET value=excluded.value",
        (seq,),
    )


def message_id(db: sqlite3.Connection, seq: int) -> str | None:
    """The id of the message formed with this record, if one was (``bindings``)."""
    hit = db.execute(
        "SELECT last, msg_id FROM bindings WHERE first<=? ORDER BY first DESC LIMIT 1", (seq,)
    ).fetchone()
    return str(hit[1]) if hit is not None and hit[0] >= seq else None


def moment(ts: float | None) -> datetime | None:
    """A ``committed`` or ``expires`` column as a time (UTC)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (name,)).fetchone())


def _migrate_from_0(db: sqlite3.Connection) -> None:
    """Version 0 kept message ids in ``records.msg_id`` and had no track rows. Its
    records keep their message ids (moved to ``bindings``); they go without precomputed
    rows (encoded from their data, as before). The emptied column stays: older SQLite
    versions cannot drop a column."""
    with transaction(db):
        for name, kind in (
            ("row_t", "INTEGER"),
            ("row_lat", "INTEGER"),
            ("row_lon", "INTEGER"),
            ("row_tail", "TEXT"),
        ):
            db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind}")
        db.execute("DROP INDEX IF EXISTS records_session")
        db.execute(_BINDINGS)
        named: dict[str, list[int]] = {}
        for seq, mid in db.execute(
            "SELECT seq, msg_id FROM records WHERE msg_id IS NOT NULL ORDER BY seq"
        ):
            named.setdefault(mid, []).append(seq)
        db.executemany(
            "INSERT INTO bindings VALUES (?,?,?)",
            [(a, b, mid) for mid, seqs in named.items() for a, b in seq_ranges(seqs)],
        )
        db.execute("UPDATE records SET msg_id=NULL WHERE msg_id IS NOT NULL")
        db.execute("PRAGMA user_version=1")
    log.info("outbox schema brought up to version 1 (message ids moved to 'bindings')")


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 stored no row differences: its fixes go as they did (each a run's
    start); fixes stored from now on are chained."""
    with transaction(db):
        db.execute("ALTER TABLE records ADD COLUMN row_prev INTEGER")
        db.execute("ALTER TABLE records ADD COLUMN row_delta TEXT")
        db.execute("PRAGMA user_version=2")
    log.info("outbox schema brought up to version 2 (fixes stored with their row differences)")


def _migrate_from_2(db: sqlite3.Connection, now: datetime) -> None:
    """Version 2 kept no commit time: its records count as committed now, so a routine
    backlog waits at most one ``batch_interval`` more, never less, and its routine
    message expiry starts afresh."""
    with transaction(db):
        db.execute("ALTER TABLE records ADD COLUMN committed REAL")
        db.execute("UPDATE records SET committed=?", (now.timestamp(),))
        db.execute("PRAGMA user_version=3")
    log.info("outbox schema brought up to version 3 (records keep their commit time)")


def _migrate_from_3(db: sqlite3.Connection) -> None:
    """Version 3 numbered routine records 2: voice notes take 2 now, routine 3."""
    with transaction(db):
        db.execute("UPDATE records SET priority=3 WHERE priority=2")
        db.execute("PRAGMA user_version=4")
    log.info("outbox schema brought up to version 4 (a priority for voice notes)")
