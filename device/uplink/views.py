"""Retained views derived from delivered records (not records themselves): the order of
the retained ``sos`` lifecycle messages, and the latest position on an OwnTracks topic.
What they last showed is kept in the outbox's device state, so a restart neither
re-retains an older ``sos`` record nor shows an older position. Best effort: a full disk
or a refused view never stops the delivery of records."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.mqtt import Connection, MqttError
from sosbeacon.device.outbox import OWNTRACKS_LAST, RETAINED_SOS_SEQ, DeviceState
from sosbeacon.device.records import FixRun, Item, RecordKind, Stored
from sosbeacon.device.uplink.homeassistant import HomeAssistant
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
        encrypt: Callable[[bytes], bytes] | None = None,
        ha: HomeAssistant | None = None,
    ) -> None:
        #: Home Assistant discovery and its states, or None
        self.ha = ha
        self._ha_battery: int | None = None
        #: OwnTracks' own encryption of what goes on the OwnTracks topics, or None
        self._encrypt = encrypt
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
        #: an ended SOS's retained position is still to be withdrawn
        self._clear_pending = False
        self._jobs: set[asyncio.Future[None]] = set()

    async def load(self) -> None:
        self.retained_seq = await self._state.get(RETAINED_SOS_SEQ)
        last = await self._state.get(OWNTRACKS_LAST)
        self.position = Position.of(last)
        self._clear_pending = bool(last.get("clear"))

    @property
    def _tracked(self) -> bool:
        """Whether the newest position is followed (for OwnTracks, Home Assistant)."""
        return bool(self.owntracks_topic) or self.ha is not None

    def _job(self, aw: Awaitable[None]) -> None:
        job = asyncio.ensure_future(aw)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def connected(self, conn: Connection) -> None:
        if self.ha is not None:
            self._job(self.ha.announce(conn))
        if self._clear_pending and self._tracked and self.position is None:
            self._job(self._clear(conn))
        elif self._dirty and self._tracked:
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
        if self.ha is not None:
            await self._home_assistant(conn, first)
        if not self._tracked:
            return
        if first.kind is RecordKind.SOS_END and isinstance(first, Stored):
            await self._end(conn, first, msg.expiry)
            return
        newest = next(
            (
                s.last if isinstance(s, FixRun) else s
                for s in reversed(msg.records)
                if is_position(s) or _start_fix(s)
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
        shown = self.position
        if shown is not None and all(shown.loc.get(k) == loc[k] for k in ("tst", "lat", "lon")):
            return  # the same fix again (the start's, then its first route point): once
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
        if self.owntracks_topic:
            await self._publish(conn, dumps(shown.loc), shown.expiry)
        if self.ha is not None:
            await self.ha.location(conn, shown.loc)
        if self.position is shown:
            self._dirty = False

    async def _home_assistant(self, conn: Connection, first: Item) -> None:
        assert self.ha is not None
        pct = (self._battery or {}).get("pct")
        if isinstance(pct, int | float) and round(pct) != self._ha_battery:
            self._ha_battery = round(pct)
            await self.ha.battery(conn, pct)
        if first.kind is RecordKind.SOS_START:
            await self.ha.sos(conn, True)
        elif first.kind is RecordKind.SOS_END:
            await self.ha.sos(conn, False)

    async def forget_home_assistant(self, conn: Connection) -> bool:
        """``sosctl purge``: the device removed from Home Assistant."""
        return self.ha is None or await self.ha.forget(conn)

    async def _end(self, conn: Connection, end: Stored, expiry: int | None) -> None:
        """An SOS ended: sharing stops at once. OwnTracks consumers are told by a
        ``transition`` (``leave``, "SOS ended") on ``<topic>/event``, at the end's own
        time, and the retained position is cleared (a zero-length retained message):
        no point is sent twice under one ``tst`` (a Recorder would store it again), and
        nothing of the SOS stays retained on the OwnTracks topic. The route itself stays
        with the relay for its 72 hours."""
        shown = self.position
        if shown is None or end.session is None or shown.session != end.session:
            return
        if self._flush is not None:
            self._flush.cancel()
        loc = shown.loc
        tst = int(end.record.time.timestamp())
        transition = {
            "_type": "transition", "event": "leave", "desc": "SOS ended", "t": "c",
            "tid": self.tid, "lat": loc["lat"], "lon": loc["lon"], "acc": loc.get("acc", 0),
            "tst": tst, "wtst": tst, **({"tag": loc["tag"]} if loc.get("tag") else {}),
        }  # fmt: skip
        self.position = None
        self._dirty = False
        await self._state.put(OWNTRACKS_LAST, {"clear": True})
        if self.owntracks_topic:
            with contextlib.suppress(MqttError):
                await conn.publish(
                    f"{self.owntracks_topic}/event", self._wrapped(dumps(transition)),
                    expiry=expiry,
                )  # fmt: skip
        await self._clear(conn)

    async def _clear(self, conn: Connection) -> None:
        """The retained position withdrawn; until the broker has taken that, the state
        says so, and the next connection withdraws it again."""
        ok = not self.owntracks_topic or await self._publish(conn, b"", None)
        if self.ha is not None:
            await self.ha.withdraw_location(conn)
        if ok:
            await self._state.put(OWNTRACKS_LAST, {})
            self._clear_pending = False
        else:
            self._clear_pending = True

    def _wrapped(self, payload: bytes) -> bytes:
        return payload if self._encrypt is None or not payload else self._encrypt(payload)

    async def _publish(self, conn: Connection, payload: bytes, expiry: int | None) -> bool:
        payload = self._wrapped(payload)  # a withdrawal (empty) stays empty
        try:
            rc = await conn.publish(self.owntracks_topic, payload, retain=True, expiry=expiry)
        except MqttError:
            return False
        if rc.is_failure:
            log.warning("the broker refused the retained view on %s: %s", self.owntracks_topic, rc)
            return False
        return True


def _start_fix(s: Stored | FixRun) -> bool:
    """An SOS start with a position: the first OwnTracks location of its session, at
    once (its first route point comes seconds later)."""
    if not isinstance(s, Stored) or s.kind is not RecordKind.SOS_START:
        return False
    fix = s.record.data.get("fix")
    return isinstance(fix, dict) and "lat" in fix and "lon" in fix
