"""Retained views derived from delivered records (not records themselves): the order of
the retained ``sos`` lifecycle messages, and the latest position on an OwnTracks topic.
What they last showed is kept in the outbox's device state, so a restart neither
re-retains an older ``sos`` record nor shows an older position. Best effort: a full disk
or a refused view never stops the delivery of records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.mqtt import Connection, MqttError
from sosbeacon.device.outbox import OWNTRACKS_LAST, RETAINED_SOS_SEQ, DeviceState
from sosbeacon.device.records import FixRun, RecordKind, Stored
from sosbeacon.device.uplink.packer import Message, is_position
from sosbeacon.device.wire import dumps, owntracks_location, shown_time

log = logging.getLogger(__package__)
#: the retained OwnTracks position is updated at most this often (seconds)
VIEW_DEBOUNCE = 0.5


@dataclass(frozen=True, slots=True)
class Position:
    """The OwnTracks position shown (retained): from record ``seq``, of ``session``."""

    seq: int
    session: str | None
    loc: dict[str, Any]
    expiry: int | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Position | None:
        try:
            return cls(int(d["seq"]), d.get("session"), dict(d["loc"]), d.get("expiry"))
        except (KeyError, TypeError, ValueError):
            return None


class RetainedViews:
    def __init__(
        self,
        state: DeviceState,
        clock: Clock,
        *,
        owntracks_topic: str,
        tid: str,
        note: Callable[[str, str], None],
    ) -> None:
        self._state = state
        self._clock = clock
        self.owntracks_topic = owntracks_topic
        self.tid = tid
        self._note = note
        #: the seq of the newest ``sos`` record published retained
        self.retained_seq = 0
        self._battery: dict[str, Any] | None = None
        self.position: Position | None = None
        self._flush: asyncio.Task[None] | None = None
        #: the newest position has not been published yet (a lost connection interrupted)
        self._dirty = False

    async def load(self) -> None:
        self.retained_seq = await self._state.get(RETAINED_SOS_SEQ)
        self.position = Position.of(await self._state.get(OWNTRACKS_LAST))

    def connected(self, conn: Connection) -> None:
        if self._dirty and self.owntracks_topic:
            self._schedule(conn)

    def disconnected(self) -> None:
        if self._flush is not None:
            self._flush.cancel()

    async def delivered(self, conn: Connection, msg: Message) -> None:
        """Keep the views up to date after ``msg`` was acknowledged."""
        try:
            await self._update(conn, msg)
        except OSError as exc:  # OutboxError among them
            self._note("views", f"the retained views' state was not stored: {exc}")

    async def _update(self, conn: Connection, msg: Message) -> None:
        for s in msg.records:
            if isinstance(s, Stored) and s.kind is not RecordKind.FIX:  # fixes carry none
                b = s.record.data.get("battery")
                if isinstance(b, dict):
                    self._battery = b
        first = msg.records[0]
        if msg.retain:
            self.retained_seq = max(self.retained_seq, first.seq)
            await self._state.put(RETAINED_SOS_SEQ, self.retained_seq)
        if not self.owntracks_topic:
            return
        if first.kind is RecordKind.SOS_END and msg.expiry is not None:
            await self._expire(conn, first.session, msg.expiry)
        newest = next(
            (
                s.last if isinstance(s, FixRun) else s
                for s in reversed(msg.records)
                if is_position(s)
            ),
            None,
        )
        if newest is not None:
            self._show(conn, newest, msg.expiry)

    def _show(self, conn: Connection, s: Stored, expiry: int | None) -> None:
        """Note the newest position; it is published (and remembered) at most every
        :data:`VIEW_DEBOUNCE` seconds, so a draining backlog costs one view update, not
        one per message."""
        if self.position is not None and s.seq <= self.position.seq:
            return  # an older point from a backlog: the latest position stays
        r = s.record
        tag = ("DRILL" if r.drill else "SOS") if r.session else None
        loc = owntracks_location(
            r.data["fix"], at=shown_time(r), tid=self.tid, battery=self._battery, tag=tag
        )
        self.position = Position(s.seq, r.session, loc, expiry)
        self._dirty = True
        self._schedule(conn)

    def _schedule(self, conn: Connection) -> None:
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._publish_latest(conn))

    async def _publish_latest(self, conn: Connection) -> None:
        await self._clock.sleep(VIEW_DEBOUNCE)
        shown = self.position
        if shown is None:
            return
        try:
            await self._state.put(OWNTRACKS_LAST, asdict(shown))
        except OSError as exc:  # OutboxError among them
            self._note("views", f"the retained views' state was not stored: {exc}")
        await self._publish(conn, dumps(shown.loc), shown.expiry)
        if self.position is shown:
            self._dirty = False

    async def _expire(self, conn: Connection, session: str | None, expiry: int) -> None:
        """The retained position of an SOS that just ended expires with its route."""
        shown = self.position
        if shown is not None and session is not None and shown.session == session:
            if self._flush is not None:
                self._flush.cancel()
            self.position = Position(shown.seq, shown.session, shown.loc, expiry)
            await self._state.put(OWNTRACKS_LAST, asdict(self.position))
            await self._publish(conn, dumps(shown.loc), expiry)

    async def _publish(self, conn: Connection, payload: bytes, expiry: int | None) -> None:
        try:
            rc = await conn.publish(self.owntracks_topic, payload, retain=True, expiry=expiry)
        except MqttError:
            return
        if rc.is_failure:
            log.warning("the broker refused the retained view on %s: %s", self.owntracks_topic, rc)
