"""What the relay keeps, and every question asked of it: one class over the tables of
:mod:`relay.db`, the same queries on SQLite and PostgreSQL.

Every method takes ``now`` (the relay's clock, epoch seconds) from its caller, so tests
move time by passing it. Records are de-duplicated by (``box``, ``seq``) through each
outbox's ledger row, which a transaction locks (``FOR UPDATE`` on PostgreSQL; SQLite has
one writer) so that two relays on one database cannot both take the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from sosbeacon.device.wire import (
    VOICE_MIME,
    AddressError,
    ClipError,
    Received,
    addresses,
    join_clip,
    parse_address,
)
from sosbeacon.relay import db, links, ranges
from sosbeacon.relay.db import (
    acks,
    boxes,
    gone,
    notifications,
    opens,
    records,
    sessions,
    voices,
)
from sosbeacon.relay.db import links as links_t

log = logging.getLogger(__name__)

T = TypeVar("T")

#: an SOS start recorded this many seconds before it reached the relay is a backlog
#: (the device had no data): its alerts wait ``backlog_hold`` for what follows it
LATE_START = 10.0

#: the PostgreSQL channel the relays on one database announce their changes on
CHANNEL = "sosbeacon_pages"
#: sessions per announcement (a NOTIFY payload must stay under 8000 bytes)
NOTIFY_SESSIONS = 200
#: seconds between checks that the listening connection is still alive
LISTEN_CHECK = 15.0
#: a page update with no route points (only the rest: a voice note, an ack)
META_ONLY = 1 << 62

#: record kinds kept with a session (routine telemetry is only counted in the ledger)
SOS_EVENT_KINDS = ("sos-start", "sos-end", "sos-ack", "last-gasp", "gap")


@dataclass
class Ingested:
    """What one message changed, for the live pages and the receipts."""

    #: records new to the relay, by session row id
    new: dict[int, list[Received]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    #: sessions whose sos-start arrived now (links were made): notify their contacts
    started: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    #: voice notes made whole now: (session row id, clip)
    voices: list[tuple[int, str]] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    #: the route points stored now, as a page shows them, by session row id
    points: dict[int, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    #: records still on their way (holes in the ledger) of each box written to
    holes: dict[str, int] = field(default_factory=dict)
    box_of: dict[int, str] = field(default_factory=dict)

    def live_update(self, sid: int) -> dict[str, Any] | None:
        """What the session's live pages need when only route points came: those points
        and how many records are still on their way, from what was just stored (no
        query). None when anything else came too: the page is asked of the database."""
        recs = self.new.get(sid)
        if not recs or any(r.kind != "fix" for r in recs):
            return None
        pts = sorted(self.points.get(sid, ()), key=lambda p: (p[1], p[0]))
        return {"points": pts, "waiting": self.holes.get(self.box_of.get(sid, ""), 0)}

    def changes(self) -> dict[int, int]:
        """The sessions whose pages changed: session id → the seq the route is needed
        from (:data:`META_ONLY`: only what is not the route, a voice note)."""
        out = {sid: min(r.seq for r in recs) - 1 for sid, recs in self.new.items() if recs}
        for sid, _clip in self.voices:
            out.setdefault(sid, META_ONLY)
        return out


@dataclass(frozen=True, slots=True)
class LinkView:
    link_id: int
    session_id: int
    name: str
    #: None when the link works; else why it is gone ("expired", "revoked")
    gone: str | None


class Store:
    def __init__(self, engine: AsyncEngine, *, link_key: bytes, backlog_hold: float = 0.0) -> None:
        self.engine = engine
        self.key = link_key
        self.backlog_hold = backlog_hold
        self._pg = engine.dialect.name == "postgresql"
        #: this relay's name in its announcements (it does not act on its own)
        self.instance = secrets.token_hex(6)
        #: several relays may share this database (PostgreSQL): they announce changes
        self.shared = self._pg
        self._sync = db.sqlite_sync_engine(engine)
        self._ingesting = asyncio.Lock()
        #: the one statement a backlog is made of, in the driver's own SQL: a day of fixes
        #: goes through ``executemany`` with no per-row work by SQLAlchemy
        cols = _ROW_COLUMNS
        assert set(cols) == {c.name for c in records.columns}, "records and _row disagree"
        marks = [f"${i}" for i in range(1, len(cols) + 1)] if self._pg else ["?"] * len(cols)
        self._insert_records = (
            f"INSERT INTO records ({', '.join(cols)}) VALUES ({', '.join(marks)}) "
            "ON CONFLICT DO NOTHING"
        )

    async def create(self) -> None:
        await db.create(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()
        if self._sync is not None:
            self._sync.dispose()

    async def _tx(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one transaction: on SQLite in a worker thread on a plain connection
        (one hop for all its statements), on PostgreSQL on the async engine through
        ``run_sync``. The ingest path and the pages' and receipts' queries run so."""
        if self._sync is not None:
            return await asyncio.to_thread(self._sync_tx, fn)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    def _sync_tx(self, fn: Callable[[Connection], T]) -> T:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return fn(conn)

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert(table) if self._pg else sqlite.insert(table)).values

    # -- ingest ------------------------------------------------------------------------

    async def ingest(self, device: str, got: Sequence[Received], *, now: float) -> Ingested:
        """Store a message's records in one transaction; returns only after the commit
        (the caller acknowledges the MQTT message then)."""
        return await self.ingest_many([(device, got)], now=now)

    async def ingest_many(
        self, messages: Sequence[tuple[str, Sequence[Received]]], *, now: float
    ) -> Ingested:
        """Several messages' records (device, records) in one transaction: a backlog
        arriving costs one commit per batch of messages, not per message."""
        out = Ingested()
        by_box: dict[tuple[str, str], list[Received]] = defaultdict(list)
        for device, got in messages:
            for r in got:
                by_box[(r.box, device)].append(r)
            if got:
                out.devices.add(device)

        def run(conn: Connection) -> None:
            for (box, device), recs in sorted(by_box.items()):
                fresh = self._ledger(conn, device, box, recs, now, out)
                self._keep(conn, device, box, fresh, now, out)
            self._notify(conn, out.changes())  # heard by the others at the commit

        # one ingest at a time in this relay (its two broker connections): on SQLite the
        # ledger row is read before the write lock is taken, so two at once could each
        # write back a ledger without the other's records
        async with self._ingesting:
            await self._tx(run)
        return out

    # -- what changed, to the other relays on this database ------------------------------

    async def announce(self, changes: dict[int, int]) -> None:
        """Tell every relay on this database that these sessions changed (session id →
        the seq their pages need the route from): PostgreSQL ``NOTIFY``; nothing on
        SQLite, which has one relay."""
        if self._pg and changes:
            await self._tx(lambda conn: self._notify(conn, changes))

    def _notify(self, conn: Connection, changes: dict[int, int]) -> None:
        if not self._pg or not changes:
            return
        items = sorted(changes.items())
        for i in range(0, len(items), NOTIFY_SESSIONS):  # a payload holds < 8000 bytes
            payload = json.dumps({"by": self.instance, "c": items[i : i + NOTIFY_SESSIONS]})
            conn.execute(select(func.pg_notify(CHANNEL, payload)))

    async def listen(self, heard: Callable[[int, int], None], ready: Callable[[], None]) -> None:
        """PostgreSQL: ``heard(session id, since)`` for every change another relay on this
        database announces, ``ready()`` once listening; returns never, raises
        :class:`ConnectionError` when the connection is lost (what was announced
        meanwhile is not heard: the caller refreshes its pages after ``ready``)."""
        async with self.engine.connect() as conn:
            pg = (await conn.get_raw_connection()).driver_connection
            assert pg is not None
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                for sid, since in self._heard(payload):
                    heard(sid, since)

            def on_lost(_conn: Any) -> None:
                if not lost.done():
                    lost.set_result(None)

            pg.add_termination_listener(on_lost)
            await pg.add_listener(CHANNEL, on_notify)
            ready()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lost), LISTEN_CHECK)
                if lost.done():
                    raise ConnectionError("the database connection was closed")
                await pg.fetchval("SELECT 1")  # a half-open connection: noticed here

    def _heard(self, payload: str) -> list[tuple[int, int]]:
        """An announcement's changes, none when it is this relay's own or malformed
        (another program on the channel: logged, never fatal)."""
        try:
            msg = json.loads(payload)
            if msg["by"] == self.instance:
                return []
            return [(int(sid), int(since)) for sid, since in msg["c"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("relay: a malformed announcement on %s: %s", CHANNEL, exc)
            return []

    def _ledger(
        self,
        conn: Connection,
        device: str,
        box: str,
        recs: list[Received],
        now: float,
        out: Ingested,
    ) -> list[Received]:
        q = select(boxes.c.device, boxes.c.seen, boxes.c.removed).where(boxes.c.box == box)
        if self._pg:
            q = q.with_for_update()
        row = (conn.execute(q)).first()
        if row is not None and row.device != device:
            log.warning(
                "relay: outbox %s of %s also published by %s: ignored", box, row.device, device
            )
            return []
        got = ranges.take(list(row.seen) if row else [], list(row.removed) if row else [], recs)
        fresh, seen, removed, dups = got.fresh, got.seen, got.removed, got.duplicates
        out.holes[box] = ranges.count(ranges.holes(seen, removed))
        if row is None:
            conn.execute(
                insert(boxes).values(
                    box=box,
                    device=device,
                    seen=seen,
                    removed=removed,
                    duplicates=dups,
                    updated=now,
                )
            )
        elif fresh or dups:
            conn.execute(
                update(boxes)
                .where(boxes.c.box == box)
                .values(
                    seen=seen,
                    removed=removed,
                    updated=now,
                    duplicates=boxes.c.duplicates + dups,
                )
            )
        out.duplicates += dups
        return fresh

    def _keep(
        self,
        conn: Connection,
        device: str,
        box: str,
        fresh: list[Received],
        now: float,
        out: Ingested,
    ) -> None:
        rows: list[tuple[Any, ...]] = []
        sids: dict[str, int] = {}
        new = out.new
        voice_chunks: dict[tuple[int, str], list[Received]] = {}
        for r in fresh:
            if r.session is None:
                continue  # routine telemetry: counted in the ledger, not kept
            sid = sids.get(r.session)
            if sid is None:
                sid = self._session_id(conn, device, r.session, r.drill, box, now)
                sids[r.session] = sid
            new[sid].append(r)
            row = _row(box, sid, r, now)
            rows.append(row)
            out.box_of[sid] = box
            if r.kind == "fix":
                out.points[sid].append(list(row[1:2] + row[4:8]))  # seq, at, lat, lon, acc
            if r.kind == "sos-start":
                if self._started(conn, sid, r, now):
                    out.started.append(sid)
            elif r.kind == "sos-ack":
                self._acked_on_device(conn, sid, box, r)
            elif r.kind == "voice":
                voice_chunks.setdefault((sid, str(r.data.get("clip"))), []).append(r)
            elif r.kind == "sos-end":
                self._ended(conn, sid, r, now)
                out.ended.append(sid)
        if rows:
            # one statement in the driver's own SQL through executemany: a multi-VALUES
            # insert of 500 rows would be compiled afresh for every message, and
            # SQLAlchemy's own executemany does per-row work a backlog pays for
            conn.exec_driver_sql(self._insert_records, rows)
        for (sid, clip), got in voice_chunks.items():
            if self._voice(conn, sid, clip, got[0], now):
                out.voices.append((sid, clip))

    def _voice(self, conn: Connection, sid: int, clip: str, r: Received, now: float) -> bool:
        """A chunk of ``clip`` arrived: once all have, the note is joined, checked
        against its hash and kept whole. True when it became whole now."""
        q = select(records.c.data, records.c.at).where(
            records.c.session_id == sid, records.c.kind == "voice"
        )
        rows = [(d, at) for d, at in (conn.execute(q)).all() if (d or {}).get("clip") == clip]
        try:
            data = join_clip(d for d, _ in rows)
        except ClipError as exc:
            if "missing" not in str(exc):
                log.warning("relay: voice note %s cannot be joined: %s", clip[:64], exc)
            return False
        res = conn.execute(
            self._insert(voices)(
                session_id=sid, clip=clip[:64], mime=str(r.data.get("mime") or VOICE_MIME)[:64],
                seconds=float(r.data.get("dur") or 0.0), bytes=len(data),
                sha256=str(r.data.get("sha256")), why=str(r.data.get("why") or "")[:200],
                at=min(at for _, at in rows), received=now, data=data,
            ).on_conflict_do_nothing()
        )  # fmt: skip
        if not res.rowcount:
            return False
        count = select(func.count()).where(voices.c.session_id == sid)
        if (conn.execute(count)).scalar_one() == 1:
            self._follow_up(conn, sid, "voice", now)  # the first note is announced
        return True

    def _session_id(
        self, conn: Connection, device: str, sess: str, drill: bool, box: str, now: float
    ) -> int:
        key = (sessions.c.device == device) & (sessions.c.sess == sess)
        sid = (conn.execute(select(sessions.c.id).where(key))).scalar()
        if sid is None:
            stmt = self._insert(sessions)(
                device=device, sess=sess, drill=drill, box=box, received=now
            ).on_conflict_do_nothing()
            conn.execute(stmt)
            sid = (conn.execute(select(sessions.c.id).where(key))).scalar_one()
        return int(sid)

    def _started(self, conn: Connection, sid: int, r: Received, now: float) -> bool:
        """The session's start: its details, and one link per contact. False when the
        session already had its links (a resend of the start under a new box)."""
        start = {k: v for k, v in r.data.items() if k != "contacts"}
        conn.execute(
            update(sessions)
            .where(sessions.c.id == sid)
            .values(
                started=r.t,
                drill=r.drill,
                start=start,
                stored_at=now,
                owner=str(r.data.get("owner") or "") or None,
            )
        )
        had = (conn.execute(select(func.count()).where(links_t.c.session_id == sid))).scalar_one()
        if had:
            return False
        contacts = r.data.get("contacts") or []
        # a late start (a backlog) is alerted a moment later, when what the device
        # recorded after it (an acknowledgement by SMS) has arrived too
        late = isinstance(r.t, int | float) and now - r.t > LATE_START
        at = now + self.backlog_hold if late else now
        for i, c in enumerate(contacts if isinstance(contacts, list) else []):
            if not isinstance(c, dict):
                continue
            name = str(c.get("name") or f"contact {i + 1}")[:200]
            salt = links.new_salt()
            tok = links.token(self.key, salt)
            res = conn.execute(
                insert(links_t).values(
                    session_id=sid,
                    contact=i,
                    name=name,
                    salt=salt,
                    token_hash=links.token_hash(tok),
                    created=now,
                    opens=0,
                )
            )
            link_id = res.inserted_primary_key[0]  # type: ignore[index]
            self._queue(conn, link_id, "start", str(c.get("reach") or ""), at)
        return True

    def _acked_on_device(self, conn: Connection, sid: int, box: str, r: Received) -> None:
        """An acknowledgement the device itself took from a contact (an SMS reply
        ``OK``): that contact's link counts as acknowledged, so the relay sends them no
        alert of its own (:meth:`claim_due` says so). Acknowledgements through the relay
        are confirmed by the device's reply instead (:meth:`ack_answered`)."""
        contact, via = r.data.get("contact"), r.data.get("via")
        if not isinstance(contact, int) or not isinstance(via, str):
            return
        link_id = (
            conn.execute(
                select(links_t.c.id).where(
                    links_t.c.session_id == sid, links_t.c.contact == contact
                )
            )
        ).scalar()
        if link_id is None:
            log.warning("relay: an acknowledgement by %s names no contact of its SOS", via)
            return
        conn.execute(
            self._insert(acks)(
                link_id=link_id, cmd_id=f"{via[:16]}:{box}:{r.seq}", requested=r.t,
                confirmed=r.t,
            ).on_conflict_do_nothing()
        )  # fmt: skip

    def _queue(self, conn: Connection, link_id: int, kind: str, reach: str, now: float) -> None:
        for text in addresses(reach):
            try:
                a = parse_address(text)
                channel, address, state, error = a.channel, a.target, "pending", None
            except AddressError as exc:
                channel, address, state, error = "unknown", text[:200], "failed", str(exc)
            conn.execute(
                self._insert(notifications)(
                    link_id=link_id,
                    kind=kind,
                    channel=channel,
                    address=address,
                    state=state,
                    attempts=0,
                    next_try=now,
                    error=error,
                ).on_conflict_do_nothing()
            )

    def _ended(self, conn: Connection, sid: int, r: Received, now: float) -> None:
        exp = r.exp
        conn.execute(
            update(sessions)
            .where(sessions.c.id == sid)
            .values(ended=r.t, end_reason=str(r.data.get("reason") or ""), expires=exp)
        )
        self._follow_up(conn, sid, "end", now)

    def _follow_up(self, conn: Connection, sid: int, kind: str, now: float) -> None:
        """A notification of ``kind`` ("end", "voice") to every channel that had the
        start; once per link and channel."""
        q = (
            select(notifications.c.link_id, notifications.c.channel, notifications.c.address)
            .join(links_t, links_t.c.id == notifications.c.link_id)
            .where(links_t.c.session_id == sid, notifications.c.kind == "start")
            .where(notifications.c.channel != "unknown")
        )
        for link_id, channel, address in (conn.execute(q)).all():
            conn.execute(
                self._insert(notifications)(
                    link_id=link_id,
                    kind=kind,
                    channel=channel,
                    address=address,
                    state="pending",
                    attempts=0,
                    next_try=now,
                ).on_conflict_do_nothing()
            )

    # -- links -------------------------------------------------------------------------

    async def open_link(self, tok: str, *, now: float, record: bool) -> LinkView | None:
        """The link behind a token (``None``: no such link, never was or long gone).
        ``record`` counts an open of the page (not of its live updates)."""
        if not links.well_formed(tok):
            return None
        h = links.token_hash(tok)
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        links_t.c.id,
                        links_t.c.session_id,
                        links_t.c.name,
                        links_t.c.revoked,
                        sessions.c.expires,
                    )
                    .join(sessions, sessions.c.id == links_t.c.session_id)
                    .where(links_t.c.token_hash == h)
                )
            ).first()
            if row is None:
                if (await conn.execute(select(gone.c.at).where(gone.c.token_hash == h))).first():
                    return LinkView(0, 0, "", "expired")
                return None
            why = None
            if row.revoked is not None:
                why = "revoked"
            elif row.expires is not None and now >= row.expires:
                why = "expired"
            if why is None and record:
                await conn.execute(insert(opens).values(link_id=row.id, at=now))
                await conn.execute(
                    update(links_t)
                    .where(links_t.c.id == row.id)
                    .values(
                        opens=links_t.c.opens + 1,
                        last_opened=now,
                        first_opened=func.coalesce(links_t.c.first_opened, now),
                    )
                )
            return LinkView(row.id, row.session_id, row.name, why)

    def link_token(self, salt: bytes) -> str:
        return links.token(self.key, salt)

    async def list_links(self) -> list[dict[str, Any]]:
        q = (
            select(
                links_t.c.id,
                links_t.c.name,
                links_t.c.created,
                links_t.c.revoked,
                links_t.c.first_opened,
                links_t.c.opens,
                links_t.c.session_id,
                sessions.c.device,
                sessions.c.sess,
                sessions.c.drill,
                sessions.c.ended,
                sessions.c.expires,
            )
            .join(sessions, sessions.c.id == links_t.c.session_id)
            .order_by(links_t.c.id)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    async def revoke(self, link_id: int, *, now: float) -> bool:
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(links_t)
                .where(links_t.c.id == link_id, links_t.c.revoked.is_(None))
                .values(revoked=now)
            )
            return bool(res.rowcount)

    # -- notifications -----------------------------------------------------------------

    async def take_back(self, me: str, *, now: float) -> int:
        """Claims ``me`` held when it stopped (killed mid-send): due again at once, not
        after their lease. A relay's name (its MQTT client id) is its own: no other
        relay holds a claim by it."""
        async with self.engine.begin() as conn:
            cur = await conn.execute(
                update(notifications)
                .where(notifications.c.state == "sending", notifications.c.claimed_by == me)
                .values(state="pending", next_try=now)
            )
        return int(cur.rowcount or 0)

    async def claim_due(
        self, *, now: float, me: str, lease: float, limit: int = 50
    ) -> list[dict[str, Any]]:
        """At most ``limit`` notifications due now, alerts of an SOS first, claimed by
        ``me`` for ``lease`` seconds (a relay that
        dies mid-send leaves its claim to expire, and another sends it; or takes it back
        itself when it starts again: :meth:`take_back`). A follow-up (the end, a voice
        note) waits for the alert on its channel to have gone (or failed for good): a
        contact never hears a voice note, nor that the SOS ended, before they know there
        is an SOS."""
        start = aliased(notifications)
        alerted = (
            select(start.c.id)
            .where(
                start.c.link_id == notifications.c.link_id,
                start.c.channel == notifications.c.channel,
                start.c.address == notifications.c.address,
                start.c.kind == "start",
                start.c.state.in_(("sent", "failed")),
            )
            .exists()
        )
        cond = and_(
            notifications.c.state.in_(("pending", "sending")),
            notifications.c.next_try <= now,
            or_(notifications.c.kind == "start", alerted),
        )
        async with self.engine.begin() as conn:
            first = case((notifications.c.kind == "start", 0), else_=1)
            q = (
                select(notifications.c.id)
                .where(cond)
                .order_by(first, notifications.c.id)
                .limit(limit)
            )
            if self._pg:
                q = q.with_for_update(skip_locked=True)
            ids = [r[0] for r in (await conn.execute(q)).all()]
            if not ids:
                return []
            await conn.execute(
                update(notifications)
                .where(notifications.c.id.in_(ids))
                .values(state="sending", claimed_by=me, next_try=now + lease)
            )
            acked = (
                select(func.min(acks.c.confirmed))
                .where(acks.c.link_id == links_t.c.id)
                .scalar_subquery()
                .label("acked")
            )
            q2 = (
                select(
                    notifications,
                    acked,
                    links_t.c.name,
                    links_t.c.salt,
                    sessions.c.id.label("sid"),
                    sessions.c.device,
                    sessions.c.drill,
                    sessions.c.start,
                    sessions.c.owner,
                    sessions.c.started,
                    sessions.c.expires,
                )
                .join(links_t, links_t.c.id == notifications.c.link_id)
                .join(sessions, sessions.c.id == links_t.c.session_id)
                .where(notifications.c.id.in_(ids))
                .order_by(notifications.c.id)
            )
            return [dict(r._mapping) for r in (await conn.execute(q2)).all()]

    async def sent(self, nid: int, *, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(notifications)
                .where(notifications.c.id == nid)
                .values(
                    state="sent", sent_at=now, attempts=notifications.c.attempts + 1, error=None
                )
            )

    async def failed(self, nid: int, error: str, *, retry_at: float | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(notifications)
                .where(notifications.c.id == nid)
                .values(
                    state="pending" if retry_at is not None else "failed",
                    next_try=retry_at if retry_at is not None else notifications.c.next_try,
                    attempts=notifications.c.attempts + 1,
                    error=error[:500],
                )
            )

    # -- acknowledgements ----------------------------------------------------------------

    async def ack_requested(self, link_id: int, cmd_id: str, *, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(acks).values(link_id=link_id, cmd_id=cmd_id, requested=now))

    async def ack_answered(self, cmd_id: str, *, ok: bool, error: str | None, now: float) -> int:
        """The device's reply to an ack; returns the session row id (0: not ours)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(acks.c.id, links_t.c.session_id)
                    .join(links_t, links_t.c.id == acks.c.link_id)
                    .where(acks.c.cmd_id == cmd_id)
                )
            ).first()
            if row is None:
                return 0
            await conn.execute(
                update(acks)
                .where(acks.c.id == row.id)
                .values(confirmed=now if ok else None, error=None if ok else error)
            )
            return int(row.session_id)

    # -- what a page shows -------------------------------------------------------------

    async def page(self, sid: int, *, since_seq: int = 0) -> dict[str, Any]:
        """A session as its page shows it (the route from ``since_seq`` on, in time order)."""
        return await self._tx(lambda conn: self._page(conn, sid, since_seq))

    def _page(self, conn: Connection, sid: int, since_seq: int) -> dict[str, Any]:
        s = (conn.execute(select(sessions).where(sessions.c.id == sid))).first()
        if s is None:
            return {}
        pts = (
            conn.execute(
                select(records.c.seq, records.c.at, records.c.lat, records.c.lon, records.c.acc)
                .where(records.c.session_id == sid, records.c.kind == "fix")
                .where(records.c.seq > since_seq)
                .order_by(records.c.at, records.c.seq)
            )
        ).all()
        bat = (
            conn.execute(
                select(records.c.at, records.c.data)
                .where(records.c.session_id == sid, records.c.kind == "battery")
                .order_by(records.c.at.desc())
                .limit(1)
            )
        ).first()
        events = (
            conn.execute(
                select(records.c.seq, records.c.kind, records.c.at, records.c.data)
                .where(records.c.session_id == sid, records.c.kind.in_(SOS_EVENT_KINDS))
                .order_by(records.c.at)
            )
        ).all()
        box = (
            conn.execute(select(boxes.c.seen, boxes.c.removed).where(boxes.c.box == s.box))
        ).first()
        acked = (
            conn.execute(
                select(links_t.c.name, acks.c.confirmed)
                .join(acks, acks.c.link_id == links_t.c.id)
                .where(links_t.c.session_id == sid, acks.c.confirmed.is_not(None))
            )
        ).all()
        notes = (
            conn.execute(
                select(voices.c.clip, voices.c.seconds, voices.c.at, voices.c.why)
                .where(voices.c.session_id == sid)
                .order_by(voices.c.at, voices.c.id)
            )
        ).all()
        start = s.start or {}
        battery = (bat.data or {}).get("battery") if bat else start.get("battery")
        start_fix = start.get("fix") if isinstance(start.get("fix"), dict) else None
        waiting = ranges.holes(box.seen, box.removed) if box else []
        return {
            "device": s.device,
            "owner": s.owner or s.device,
            "drill": bool(s.drill),
            "started": s.started,
            "ended": s.ended,
            "end_reason": s.end_reason,
            "expires": s.expires,
            "points": [[p.seq, p.at, p.lat, p.lon, p.acc] for p in pts],
            "start_fix": start_fix,
            "start_fix_age": start.get("fix_age"),
            "battery": battery,
            "events": [
                {"seq": e.seq, "kind": e.kind, "t": e.at, **_event_text(e.kind, e.data)}
                for e in events
            ],
            "waiting": ranges.count(waiting),
            "confirmed": [{"name": a.name, "at": a.confirmed} for a in acked],
            "voices": [
                {"clip": v.clip, "seconds": v.seconds, "at": v.at, "asked": _asked(v.why)}
                for v in notes
            ],
            "shared": start.get("shared") if isinstance(start.get("shared"), dict) else None,
            "before": _before(start.get("events")),
        }

    async def voice(
        self, sid: int, clip: str | None = None
    ) -> tuple[str, str, bytes, float] | None:
        """A voice note of session ``sid`` (its first when ``clip`` is None): its clip
        id, media type, bytes and seconds."""
        q = select(voices.c.clip, voices.c.mime, voices.c.data, voices.c.seconds).where(
            voices.c.session_id == sid
        )
        if clip is not None:
            q = q.where(voices.c.clip == clip)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q.order_by(voices.c.at, voices.c.id).limit(1))).first()
        return (row.clip, row.mime, bytes(row.data), float(row.seconds)) if row else None

    # -- receipts ----------------------------------------------------------------------

    async def receipt(self, device: str, *, link_base: str) -> dict[str, Any]:
        """What the device is told: the seqs stored per box, and for its newest session
        each contact's place, share link (``link_base`` + token, while it works: the
        device texts it when there is no data), notifications, first open and
        acknowledgement."""
        return await self._tx(lambda conn: self._receipt(conn, device, link_base))

    def _receipt(self, conn: Connection, device: str, link_base: str) -> dict[str, Any]:
        stored = {
            r.box: ranges.text(r.seen)
            for r in (
                conn.execute(select(boxes.c.box, boxes.c.seen).where(boxes.c.device == device))
            ).all()
        }
        s = (
            conn.execute(
                select(sessions.c.id, sessions.c.sess, sessions.c.stored_at, sessions.c.expires)
                .where(sessions.c.device == device)
                .order_by(sessions.c.received.desc(), sessions.c.id.desc())
                .limit(1)
            )
        ).first()
        contacts: list[dict[str, Any]] = []
        if s is not None:
            lrows = (
                conn.execute(
                    select(
                        links_t.c.id,
                        links_t.c.contact,
                        links_t.c.name,
                        links_t.c.salt,
                        links_t.c.first_opened,
                        links_t.c.revoked,
                    )
                    .where(links_t.c.session_id == s.id)
                    .order_by(links_t.c.contact)
                )
            ).all()
            nrows = (
                conn.execute(
                    select(
                        notifications.c.link_id,
                        notifications.c.kind,
                        notifications.c.channel,
                        notifications.c.state,
                        notifications.c.sent_at,
                        notifications.c.error,
                    )
                    .join(links_t, links_t.c.id == notifications.c.link_id)
                    .where(links_t.c.session_id == s.id)
                    .order_by(notifications.c.id)
                )
            ).all()
            arows = (
                conn.execute(
                    select(acks.c.link_id, func.min(acks.c.confirmed))
                    .join(links_t, links_t.c.id == acks.c.link_id)
                    .where(links_t.c.session_id == s.id, acks.c.confirmed.is_not(None))
                    .group_by(acks.c.link_id)
                )
            ).all()
            acked = {r[0]: r[1] for r in arows}
            for lk in lrows:
                sends = [
                    {"kind": n.kind, "channel": n.channel, "state": n.state,
                     **({"at": n.sent_at} if n.sent_at else {}),
                     **({"error": n.error} if n.error and n.state != "sent" else {})}
                    for n in nrows if n.link_id == lk.id
                ]  # fmt: skip
                live = lk.revoked is None and s.expires is None
                contacts.append(
                    {
                        "contact": lk.contact,
                        "name": lk.name,
                        **({"link": link_base + self.link_token(lk.salt)} if live else {}),
                        "notified": sends,
                        "opened": lk.first_opened,
                        "acked": acked.get(lk.id),
                        **({"revoked": lk.revoked} if lk.revoked else {}),
                    }
                )
        out: dict[str, Any] = {"v": 1, "stored": stored}
        if s is not None:
            out.update(sess=s.sess, sos_stored=s.stored_at, exp=s.expires, contacts=contacts)
        return out

    async def session_key(self, sid: int) -> tuple[str, str] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.device, sessions.c.sess).where(sessions.c.id == sid)
                )
            ).first()
        return (row.device, row.sess) if row else None

    # -- expiry ------------------------------------------------------------------------

    async def sweep(self, *, now: float, gone_for: float) -> int:
        """Delete every session whose route has expired: its records, voice notes, links,
        opens, notifications and acks; each link's hash moves to ``gone`` (410). Returns
        how many sessions went."""
        async with self.engine.begin() as conn:
            sids = [
                r[0]
                for r in (
                    await conn.execute(
                        select(sessions.c.id).where(
                            sessions.c.expires.is_not(None), sessions.c.expires <= now
                        )
                    )
                ).all()
            ]
            if sids:
                hashes = (
                    await conn.execute(
                        select(links_t.c.token_hash).where(links_t.c.session_id.in_(sids))
                    )
                ).all()
                if hashes:
                    await conn.execute(
                        self._insert(gone)(
                            [{"token_hash": h[0], "at": now} for h in hashes]
                        ).on_conflict_do_nothing()
                    )
                link_ids = select(links_t.c.id).where(links_t.c.session_id.in_(sids))
                for table in (opens, notifications, acks):
                    await conn.execute(delete(table).where(table.c.link_id.in_(link_ids)))
                await conn.execute(delete(voices).where(voices.c.session_id.in_(sids)))
                await conn.execute(delete(links_t).where(links_t.c.session_id.in_(sids)))
                await conn.execute(delete(records).where(records.c.session_id.in_(sids)))
                await conn.execute(delete(sessions).where(sessions.c.id.in_(sids)))
            await conn.execute(delete(gone).where(gone.c.at < now - gone_for))
        return len(sids)

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            out = {}
            for name, table in (("sessions", sessions), ("records", records),
                                ("links", links_t), ("gone", gone)):  # fmt: skip
                out[name] = (
                    await conn.execute(select(func.count()).select_from(table))
                ).scalar_one()
            return out


_FIX_COLUMNS = ("lat", "lon", "acc", "alt", "spd", "crs")


#: the order of :func:`_row`'s values
_ROW_COLUMNS = ("box", "seq", "session_id", "kind", "at", *_FIX_COLUMNS, "data", "received")


def _row(box: str, sid: int, r: Received, now: float) -> tuple[Any, ...]:
    """A record as the driver takes it, in :data:`_ROW_COLUMNS` order (``data`` as JSON
    text): built straight, as a day of fixes asks of it 86,400 times."""
    extra = _extra(r)
    data = None if extra is None else json.dumps(extra, separators=(",", ":"))
    if r.kind == "fix":
        f = r.data.get("fix")
        if isinstance(f, dict):
            get = f.get
            return (box, r.seq, sid, "fix", r.t, get("lat"), get("lon"), get("acc"),
                    get("alt"), get("spd"), get("crs"), data, now)  # fmt: skip
    return (box, r.seq, sid, r.kind, r.t, None, None, None, None, None, None, data, now)


def _extra(r: Received) -> dict[str, Any] | None:
    """What a record keeps beyond its columns."""
    if r.kind == "fix":
        fix = r.data.get("fix") or {}
        if len(fix) <= len(_FIX_COLUMNS) and fix.keys() <= set(_FIX_COLUMNS):
            return None  # the common case: all in columns
        rest = {k: v for k, v in fix.items() if k not in _FIX_COLUMNS}
        return {"fix": rest} if rest else None
    if r.kind == "sos-start":
        return {k: v for k, v in r.data.items() if k != "contacts"}
    return dict(r.data) or None


#: what the page may say of the hour before an SOS (device/recent.py's vocabulary)
BEFORE = frozenset({
    "button-press", "countdown", "countdown-cancelled", "gps-first-fix", "gps-lost",
    "gps-back", "link-down", "link-up", "battery-ok", "battery-low", "battery-critical",
})  # fmt: skip


def _before(events: Any) -> list[dict[str, Any]]:
    """The device's hour before the SOS (shared with its start), in its known words only."""
    out = []
    for e in events if isinstance(events, list) else []:
        if isinstance(e, dict) and e.get("what") in BEFORE and isinstance(e.get("t"), int | float):
            pct = e.get("pct")
            out.append({"t": e["t"], "what": e["what"],
                        **({"pct": pct} if isinstance(pct, int | float) else {})})  # fmt: skip
    return out[-200:]


def _asked(why: str | None) -> str | None:
    """Who asked for a voice note (``voice-now:<name>``), or None (the SOS start)."""
    if why and why.startswith("voice-now:"):
        return why.split(":", 1)[1] or "a contact"
    return None


def _event_text(kind: str, data: Any) -> dict[str, Any]:
    """The part of an event a page shows (never a contact's address)."""
    d = data or {}
    if kind == "sos-ack":
        return {"by": d.get("by")}
    if kind == "sos-end":
        return {"reason": d.get("reason")}
    if kind == "gap":
        return {"reason": d.get("reason"), "ranges": d.get("ranges")}
    if kind == "last-gasp":
        return {"reason": d.get("reason")}
    return {"trigger": d.get("trigger")} if kind == "sos-start" else {}
