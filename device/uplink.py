"""From the outbox to the broker, losing nothing: the MQTT v5 uplink.

* Records leave the outbox only when the broker's PUBACK carries a success reason code.
  A failure code (not authorised 0x87, quota 0x97, ...) keeps them, logs the reason and
  backs off; a connection lost with messages in flight puts them back to pending, and
  they are resent with the same message ids.
* Two senders: SOS events, last gasp and live positions go at once (or every
  ``sos_interval``); routine records wait until ``batch_count`` of them or the oldest is
  ``batch_interval`` old, then the backlog drains in large ``track`` messages. Routine
  messages in flight are capped in bytes, so an SOS never queues behind a backlog on a
  slow link.
* Retained ``status`` (online; the will says offline) and retained ``sos`` (the latest
  lifecycle record); the latest position also goes, retained, to an OwnTracks topic.
* Reconnects back off exponentially with jitter, capped at ``backoff_max_sos`` while an
  SOS is active; paho's keepalive notices a black-holed link.
* Commands on ``cmd`` are validated, applied, answered on the MQTT v5 response topic,
  and acknowledged to the broker only once handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from device.backoff import Backoff
from device.clock import Clock
from device.commands import CommandHandler
from device.events import EventKind, Events
from device.mqtt import BrokerConfig, Connack, Connection, ConnectRefused, Inbound, MqttError, Will
from device.outbox import OWNTRACKS_LAST, RETAINED_SOS_SEQ, Outbox, OutboxError, Pending
from device.receipts import NO_SUBSCRIBERS, Delivery
from device.records import FixRun, Item, Priority, RecordKind, Stored, seqs_of
from device.wire import (
    RETAINED_KINDS,
    SOS_KINDS,
    CommandError,
    Topics,
    command_id,
    dumps,
    encode_sos,
    encode_track,
    owntracks_location,
    parse_command,
    seq_ranges_text,
    shown_time,
    status_payload,
)

log = logging.getLogger(__name__)

#: PUBACK reason code: the packet was larger than the broker accepts
PACKET_TOO_LARGE = 0x95
#: the retained OwnTracks position is updated at most this often (seconds)
VIEW_DEBOUNCE = 0.5


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    device_id: str
    prefix: str = "sosbeacon"
    #: where the OwnTracks-compatible latest position goes (retained); "" turns it off;
    #: ``None``: ``owntracks/sosbeacon/<device_id>``
    owntracks_topic: str | None = None
    #: OwnTracks tracker id (two characters shown on the map); default: from device id
    owntracks_tid: str = ""
    #: MQTT message expiry for routine telemetry (outside an SOS), seconds
    routine_expiry: int = 7 * 24 * 3600
    #: idle: routine records go when this many wait ...
    batch_count: int = 100
    #: ... or when the oldest has waited this long (seconds)
    batch_interval: float = 300.0
    #: during an SOS: live records go at once (0) or at most this often (seconds)
    sos_interval: float = 0.0
    #: records per ``track`` message, and its size cap in bytes
    max_batch: int = 500
    max_message_bytes: int = 16 * 1024
    #: routine messages in flight: at most this many, and this many bytes
    window: int = 16
    inflight_bytes: int = 32 * 1024
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    backoff_max_sos: float = 10.0


@dataclass
class UplinkStats:
    connects: int = 0
    published: int = 0
    records_acked: int = 0
    #: failure reason codes from the broker, by name
    failures: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    commands_rejected: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """A message formed from stored records; ``msg_id`` is stored with them."""

    msg_id: str
    topic: str
    payload: bytes
    records: tuple[Item, ...]
    retain: bool
    expiry: int | None
    #: the records' seqs, in order
    seqs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seqs", seqs_of(self.records))


def sos_message_id(box: str, seq: int) -> str:
    """The message id of an SOS lifecycle record's message (it is always alone in it):
    the same at every resend, without storing it."""
    return hashlib.blake2b(f"{box}:{seq}".encode(), digest_size=10).hexdigest()


def routine_due(p: Pending, now: datetime, cfg: UplinkConfig) -> float | None:
    """Seconds until the routine backlog should go (0: now), or ``None`` if empty. Ages
    are from when the oldest record was committed, by the device's clock (``now`` is
    that clock too), never from a receiver's fix time. A commit time ahead of ``now``
    means the system clock was set back since: the backlog goes now rather than wait
    for the clock to catch up."""
    if p.routine == 0:
        return None
    if p.routine >= cfg.batch_count or p.oldest_routine is None:
        return 0.0
    age = (now - p.oldest_routine).total_seconds()
    if age < 0:
        return 0.0
    return max(0.0, cfg.batch_interval - age)


class Uplink:
    def __init__(
        self,
        *,
        config: UplinkConfig,
        broker: BrokerConfig,
        outbox: Outbox,
        clock: Clock,
        commands: CommandHandler | None = None,
        sos_active: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        #: link up and down, commands, receipts (``sosctl events``)
        self.events = events or Events()
        self.topics = Topics.for_device(config.device_id, config.prefix)
        self.broker = broker if broker.client_id else replace(broker, client_id=config.device_id)
        self.owntracks_topic = (
            f"owntracks/sosbeacon/{config.device_id}"
            if config.owntracks_topic is None
            else config.owntracks_topic
        )
        self.tid = (config.owntracks_tid or config.device_id)[:2]
        self._outbox = outbox
        self._clock = clock
        self._commands = commands
        self._sos_active = sos_active
        rng = rng or random.Random()
        self._reconnect = Backoff(base=config.backoff_min, cap=config.backoff_max, rng=rng)
        self._refused = Backoff(base=config.backoff_min, cap=config.backoff_max, rng=rng)
        self._pause_until = 0.0
        self._max_bytes = config.max_message_bytes
        self._conn_acks = self._conn_largest = self._stalls = 0
        self._retained_seq = 0
        self._battery: dict[str, Any] | None = None
        #: the newest OwnTracks position (seq, session, loc, expiry), and its pending update
        self._ot_last: dict[str, Any] = {}
        self._ot_flush: asyncio.Task[None] | None = None
        #: the newest position has not been published yet (a lost connection interrupted)
        self._ot_dirty = False
        self._done_commands: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats = UplinkStats()
        #: what reached whom (the relay's receipts; an SOS nobody was subscribed to)
        self.delivery = Delivery()
        #: set while connected and serving
        self.connected = asyncio.Event()
        #: set after a failed connection attempt or a lost connection, until connected
        self.disconnected = asyncio.Event()
        #: set when the broker answered a message with a failure reason code
        self.refused = asyncio.Event()
        #: set whenever the broker answered a message (clear it, look, then wait)
        self.acked = asyncio.Event()
        #: messages published and not yet answered, on the current connection
        self._settling: set[asyncio.Task[None]] = set()
        #: warnings said on this connection (:meth:`_note_once`)
        self._said: set[str] = set()

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect: forever (cancel to stop, with a clean goodbye)."""
        self._retained_seq = await self._outbox.state.get(RETAINED_SOS_SEQ)
        self._ot_last = await self._outbox.state.get(OWNTRACKS_LAST)
        outage = False
        while True:
            conn = Connection(self.broker, will=self._will())
            try:
                connack = await conn.connect()
            except ConnectRefused as exc:
                self._note_error(str(exc), log.error)
            except MqttError as exc:
                if not outage:
                    self._note_error(f"{exc}; buffering in the outbox and retrying", log.warning)
                    self.events.emit(EventKind.LINK, state="down", why=str(exc), lost=False)
                outage = True
            else:
                outage = False
                self._reconnect.reset()
                try:
                    await self._serve(conn, connack)
                except MqttError as exc:
                    self._note_error(f"broker connection lost: {exc}", log.warning)
                    self.events.emit(EventKind.LINK, state="down", why=str(exc), lost=True)
                except OSError as exc:  # OutboxError among them
                    # e.g. the disk is full: the records stay where they are; try again
                    self._note_error(f"outbox error while sending: {exc}", log.error)
                except asyncio.CancelledError:
                    await self._goodbye(conn)
                    raise
                except Exception as exc:  # a bug must not end delivery for good
                    log.exception("uplink failed; reconnecting")
                    self.stats.last_error = f"internal error: {exc!r}"
                finally:
                    self.connected.clear()
                    conn.close()
                    await self._outbox.requeue()
            self.disconnected.set()
            await self._wait_reconnect()

    async def drained(self) -> None:
        """Wait until the outbox is empty: everything stored was acknowledged."""
        while True:
            self.acked.clear()
            # while messages are out, something is undelivered: no need to ask the outbox
            if not self._settling and not await self._outbox.has_undelivered():
                return
            await self.acked.wait()

    def _will(self) -> Will:
        return Will(
            self.topics.status,
            status_payload(
                "offline", box=self._outbox.outbox_id, at=self._clock.now(), why="connection lost"
            ),
        )

    async def _goodbye(self, conn: Connection) -> None:
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(2):
                await conn.publish(
                    self.topics.status,
                    status_payload(
                        "offline", box=self._outbox.outbox_id, at=self._clock.now(), why="shutdown"
                    ),
                    retain=True,
                )
        await conn.disconnect()

    async def _wait_reconnect(self) -> None:
        """Back off; an SOS arriving meanwhile shortens the wait to the SOS cap."""
        sos_cap = self.config.backoff_max_sos
        delay = self._reconnect.next(sos_cap if self._sos_active() else None)
        start = self._clock.monotonic()
        deadline = start + delay
        watch = self._outbox.watch()
        while (left := deadline - self._clock.monotonic()) > 0:
            watch.clear()
            if self._sos_active() and deadline - start > sos_cap:
                deadline = start + min(delay, sos_cap)
                continue
            await self._wait(watch, left)

    async def _wait(self, event: asyncio.Event, seconds: float | None) -> None:
        """Until ``event`` is set or ``seconds`` pass on the injected clock."""
        if seconds is None:
            await event.wait()
            return
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    async def _serve(self, conn: Connection, connack: Connack) -> None:
        self.stats.connects += 1
        if connack.maximum_packet:
            self._max_bytes = min(self._max_bytes, connack.maximum_packet - 1024)
        online = status_payload("online", box=self._outbox.outbox_id, at=self._clock.now())
        rc = await conn.publish(self.topics.status, online, retain=True)
        if rc.is_failure:
            log.error(
                "the broker refused the status message on %s (%s): check its ACL for this device",
                self.topics.status,
                rc,
            )
        subscriptions = [(self.topics.receipt, "the relay's receipts")]
        if self._commands is not None:
            subscriptions.insert(0, (self.topics.cmd, "commands"))
        for topic, what in subscriptions:
            rc = await conn.subscribe(topic)
            if rc.is_failure:
                log.error(
                    "subscribing to %s was refused (%s): %s will not arrive; check the "
                    "broker's ACL",
                    topic,
                    rc,
                    what,
                )
        log.info("connected to the broker %s:%d", self.broker.host, self.broker.port)
        self.events.emit(
            EventKind.LINK, state="up", broker=f"{self.broker.host}:{self.broker.port}"
        )
        self.disconnected.clear()
        self.connected.set()
        window = max(1, min(self.config.window, connack.receive_maximum - 2))
        budget = _Budget(self.config.inflight_bytes, window)
        tasks = [
            self._send_loop(conn, urgent=True, budget=None),
            self._send_loop(conn, urgent=False, budget=budget),
            self._command_loop(conn),
            _raise_when_closed(conn),
        ]
        self._conn_acks = 0
        self._conn_largest = 0
        self._said.clear()
        if self._ot_dirty and self.owntracks_topic:
            self._schedule_owntracks(conn)
        try:
            async with asyncio.TaskGroup() as tg:
                for job in tasks:
                    tg.create_task(job)
        except ExceptionGroup as group:
            # the first failure is why this connection ended (the others are its echo)
            raise group.exceptions[0] from None
        finally:
            if self._ot_flush is not None:
                self._ot_flush.cancel()
            for t in self._settling:
                t.cancel()
            await asyncio.gather(*self._settling, return_exceptions=True)
            self._note_stall()

    def _note_stall(self) -> None:
        """Some brokers drop the connection instead of answering "packet too large"
        (Mosquitto's ``message_size_limit``), and the same message would be resent
        forever. Two connections in a row that ended with nothing acknowledged while a
        large message was out: halve the message size cap."""
        if self._conn_acks or self._conn_largest <= 1024:
            self._stalls = 0
            return
        self._stalls += 1
        if self._stalls >= 2:
            self._stalls = 0
            self._max_bytes = max(1024, min(self._max_bytes, self._conn_largest) // 2)
            log.warning(
                "two connections in a row were lost with a %d-byte message unacknowledged; "
                "sending smaller messages (at most %d bytes)",
                self._conn_largest,
                self._max_bytes,
            )

    # -- sending -----------------------------------------------------------------------

    async def _send_loop(
        self,
        conn: Connection,
        *,
        urgent: bool,
        budget: _Budget | None,
    ) -> None:
        cfg = self.config
        watch = self._outbox.watch()
        last_sent = -math.inf
        first, last = (
            (Priority.SOS, Priority.LIVE) if urgent else (Priority.ROUTINE, Priority.ROUTINE)
        )
        # urgent: everything waiting; routine: two messages' worth at a time
        limit = cfg.max_batch * (4 if urgent else 2)
        # no need to ask the outbox whether records are due when SOS records go at once,
        # or when the last take was full (a backlog drains): one step less on the way
        at_once = urgent and not cfg.sos_interval
        more = False
        while True:
            watch.clear()
            pause = self._pause_until - self._clock.monotonic()
            if pause > 0:
                await self._clock.sleep(pause)
                continue
            if not (at_once or (more and not urgent)):
                p = await self._outbox.pending(cfg.batch_count)
                if urgent:
                    wait: float | None = None
                    if p.urgent:
                        wait = max(0.0, last_sent + cfg.sos_interval - self._clock.monotonic())
                else:
                    wait = routine_due(p, self._clock.now(), cfg)
                if wait is None or wait > 0:
                    await self._wait(watch, wait)
                    continue
            stored = await self._outbox.take(limit, first=first, last=last, run=cfg.max_batch)
            more = len(seqs_of(stored)) >= limit  # more when a whole message came along
            if not stored:
                if at_once:
                    await self._wait(watch, None)
                continue
            last_sent = self._clock.monotonic()
            for msg in await self._pack(stored):
                if budget is not None:
                    await budget.acquire(len(msg.payload))
                fut = conn.publish(
                    msg.topic,
                    msg.payload,
                    retain=msg.retain,
                    expiry=msg.expiry,
                    user=[("msg_id", msg.msg_id), ("seq", seq_ranges_text(msg.seqs))],
                )
                self.stats.published += 1
                self._conn_largest = max(self._conn_largest, len(msg.payload))
                fut.add_done_callback(functools.partial(self._learn_size, msg))
                task = asyncio.create_task(self._settle(conn, msg, fut, budget))
                self._settling.add(task)
                task.add_done_callback(self._answered)

    async def _settle(
        self, conn: Connection, msg: Message, fut: asyncio.Future[Any], budget: _Budget | None
    ) -> None:
        try:
            rc = await fut
        except MqttError:
            return  # the connection is gone; everything in flight goes back to pending
        finally:
            if budget is not None:
                budget.release(len(msg.payload))
        if not rc.is_failure:
            if rc.value == NO_SUBSCRIBERS and msg.topic == self.topics.sos:
                for s in msg.records:
                    if s.kind is RecordKind.SOS_START and s.session:
                        self.delivery.no_subscribers(s.session)
            # shielded: a connection lost meanwhile must not cut the bookkeeping short
            await asyncio.shield(self._delivered(msg))
            await self._after_delivery(conn, msg)
            return
        name = str(rc)
        self.stats.failures[name] = self.stats.failures.get(name, 0) + 1
        self.refused.set()
        # A message too large for the broker needs no backoff: _learn_size lowered the
        # cap, and its records go again in smaller messages.
        if not _too_large(msg, rc):
            delay = self._refused.next(self.config.backoff_max_sos if self._sos_active() else None)
            self._pause_until = max(self._pause_until, self._clock.monotonic() + delay)
            self._note_error(
                f"the broker refused message {msg.msg_id} (seq {seq_ranges_text(msg.seqs)}) on "
                f"{msg.topic}: {rc}. The records stay in the outbox; retrying in {delay:.1f}s"
                + (" (check the broker's ACL for this device)" if rc.value == 0x87 else ""),
                log.error,
            )
        await self._outbox.requeue(msg.seqs)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self.acked.set()
        if not task.cancelled() and task.exception() is not None:
            # a bug: said here, never left as "Task exception was never retrieved"
            log.error("settling a message failed", exc_info=task.exception())

    def _note_once(self, key: str, text: str) -> None:
        """A warning said once per connection, not once per message."""
        if key not in self._said:
            self._said.add(key)
            self._note_error(text, log.warning)

    async def _delivered(self, msg: Message) -> None:
        await self._outbox.ack(msg.seqs)
        self.events.emit(
            EventKind.RECORDS, what="acked", count=len(msg.seqs), seq=seq_ranges_text(msg.seqs)
        )
        self.stats.records_acked += len(msg.seqs)
        self.acked.set()
        self._conn_acks += 1
        self._refused.reset()

    def _learn_size(self, msg: Message, fut: asyncio.Future[Any]) -> None:
        """At the PUBACK itself (Mosquitto may drop the connection right after a "packet
        too large", before any task gets to run): halve the message size cap."""
        if fut.cancelled() or fut.exception() is not None:
            return
        if _too_large(msg, fut.result()):
            self._max_bytes = max(512, min(self._max_bytes, len(msg.payload)) // 2)
            log.warning(
                "the broker found a %d-byte message too large; sending smaller ones "
                "(at most %d bytes)",
                len(msg.payload),
                self._max_bytes,
            )

    async def _pack(self, stored: list[Item]) -> list[Message]:
        """Group records into messages: those already bound keep their message; new ones
        form ``sos`` messages (one each) and ``track`` batches (one session, one expiry,
        at most ``max_batch`` records)."""
        now = self._clock.now()
        if any(s.expires and s.expires <= now for s in stored):
            try:
                await self._outbox.purge(now)  # replaced by a gap record; never sent
            except OSError as exc:  # a full disk: deleted later, never sent meanwhile
                self._note_once("purge", str(exc))
            stored = [s for s in stored if not (s.expires and s.expires <= now)]
        bound: OrderedDict[str, list[Item]] = OrderedDict()
        fresh: list[list[Item]] = []
        messages: list[Message] = []
        cur: list[Item] | None = None  # the track batch being formed ...
        n = 0  # ... and how many records it holds
        for s in stored:
            size = len(s) if isinstance(s, FixRun) else 1
            if s.msg_id is not None:
                bound.setdefault(s.msg_id, []).append(s)
            elif isinstance(s, Stored) and s.kind in SOS_KINDS:
                # one record per message: its id comes from the record, nothing to bind
                messages.append(self._message(sos_message_id(self._outbox.outbox_id, s.seq), [s]))
                cur = None
            elif (
                cur is not None
                and s.session == cur[0].session
                and s.drill == cur[0].drill
                and s.expires == cur[0].expires
                and n + size <= self.config.max_batch
            ):
                cur.append(s)
                n += size
            else:
                cur = [s]
                n = size
                fresh.append(cur)
        for mid, group in bound.items():
            msg = self._message(mid, group)
            if self._fits(msg):
                messages.append(msg)
            else:
                fresh.append(group)  # too large for this broker: formed again, smaller
        new: list[Message] = []
        for group in fresh:
            new += await self._split(group)
        if new:
            try:
                await self._outbox.bind({m.msg_id: m.seqs for m in new})
            except OutboxError as exc:
                # A full disk: the messages go anyway. Unbound, a resend after a restart
                # would carry new ids (receivers still drop duplicates by seq).
                self._note_once("bind", f"message ids not stored ({exc}); sending anyway")
        return sorted(messages + new, key=lambda m: (m.records[0].priority, m.records[0].seq))

    async def _split(self, group: list[Item]) -> list[Message]:
        msg = self._message(uuid.uuid4().hex[:20], group)
        if self._fits(msg):
            return [msg]
        if len(group) == 1 and isinstance(group[0], FixRun):
            group = list(await self._outbox.cut(group[0]))
        half = len(group) // 2
        return await self._split(group[:half]) + await self._split(group[half:])

    def _fits(self, msg: Message) -> bool:
        """Within the message size cap, or a single record (which cannot be split)."""
        return len(msg.payload) <= self._max_bytes or len(msg.seqs) == 1

    def _message(self, msg_id: str, group: list[Item]) -> Message:
        first = group[0]
        box = self._outbox.outbox_id
        if isinstance(first, Stored) and first.kind in SOS_KINDS:
            topic, payload = self.topics.sos, encode_sos(box, first.seq, first.record)
            retain = first.kind in RETAINED_KINDS and first.seq > self._retained_seq
        else:
            topic, payload = self.topics.track, encode_track(box, group)
            retain = False
        return Message(msg_id, topic, payload, tuple(group), retain, self._expiry(first))

    def _expiry(self, s: Item) -> int | None:
        """MQTT message expiry, counted down on the device's clock: a session's records
        until 72 h after it ended; during an active SOS none (the end is not known yet);
        routine telemetry ``routine_expiry`` after the first record was committed (a
        backlog that waited offline keeps only what is left of its week)."""
        now = self._clock.now().timestamp()
        if s.expires is not None:
            return max(1, math.ceil(s.expires.timestamp() - now))
        if s.session is not None:
            return None
        life = self.config.routine_expiry
        if s.committed is None:
            return life
        return max(1, math.ceil(min(life, life - (now - s.committed))))

    async def _after_delivery(self, conn: Connection, msg: Message) -> None:
        """Keep the retained views up to date: ``sos`` order, OwnTracks position. What
        is remembered of them in the outbox is best effort (a full disk must not stop
        the delivery of the rest)."""
        try:
            await self._update_views(conn, msg)
        except OSError as exc:  # OutboxError among them
            self._note_once("views", f"the retained views' state was not stored: {exc}")

    async def _update_views(self, conn: Connection, msg: Message) -> None:
        for s in msg.records:
            if isinstance(s, Stored) and s.kind is not RecordKind.FIX:  # fixes carry none
                b = s.record.data.get("battery")
                if isinstance(b, dict):
                    self._battery = b
        first = msg.records[0]
        if msg.retain:
            self._retained_seq = max(self._retained_seq, first.seq)
            await self._outbox.state.put(RETAINED_SOS_SEQ, self._retained_seq)
        if not self.owntracks_topic:
            return
        if first.kind is RecordKind.SOS_END and msg.expiry is not None:
            await self._owntracks_expire(conn, first.session, msg.expiry)
        newest = next(
            (
                s.last if isinstance(s, FixRun) else s
                for s in reversed(msg.records)
                if isinstance(s, FixRun)
                or s.row is not None
                or (s.kind is RecordKind.FIX and s.record.data.get("fix"))
            ),
            None,
        )
        if newest is not None:
            await self._owntracks(conn, newest, msg.expiry)

    async def _owntracks(self, conn: Connection, s: Stored, expiry: int | None) -> None:
        """Note the newest position; it is published (and remembered in the outbox) at
        most every :data:`VIEW_DEBOUNCE` seconds, so a draining backlog costs one view
        update, not one per message."""
        if s.seq <= self._ot_last.get("seq", 0):
            return  # an older point from a backlog: the latest position stays
        r = s.record
        tag = ("DRILL" if r.drill else "SOS") if r.session else None
        loc = owntracks_location(
            r.data["fix"], at=shown_time(r), tid=self.tid, battery=self._battery, tag=tag
        )
        self._ot_last = {"seq": s.seq, "session": r.session, "loc": loc, "expiry": expiry}
        self._ot_dirty = True
        self._schedule_owntracks(conn)

    def _schedule_owntracks(self, conn: Connection) -> None:
        if self._ot_flush is None or self._ot_flush.done():
            self._ot_flush = asyncio.create_task(self._flush_owntracks(conn))

    async def _flush_owntracks(self, conn: Connection) -> None:
        await self._clock.sleep(VIEW_DEBOUNCE)
        last = self._ot_last
        try:
            await self._outbox.state.put(OWNTRACKS_LAST, last)
        except OSError as exc:  # OutboxError among them
            self._note_once("views", f"the retained views' state was not stored: {exc}")
        await self._publish_view(conn, self.owntracks_topic, dumps(last["loc"]), last["expiry"])
        if self._ot_last is last:
            self._ot_dirty = False

    async def _owntracks_expire(self, conn: Connection, session: str | None, expiry: int) -> None:
        """The retained position of an SOS that just ended expires with its route."""
        last = self._ot_last
        if session is not None and last.get("session") == session:
            if self._ot_flush is not None:
                self._ot_flush.cancel()
            self._ot_last = {**last, "expiry": expiry}
            await self._outbox.state.put(OWNTRACKS_LAST, self._ot_last)
            await self._publish_view(conn, self.owntracks_topic, dumps(last["loc"]), expiry)

    async def _publish_view(
        self, conn: Connection, topic: str, payload: bytes, expiry: int | None
    ) -> None:
        """A retained derived view (not a record): best effort, failures logged."""
        try:
            rc = await conn.publish(topic, payload, retain=True, expiry=expiry)
        except MqttError:
            return
        if rc.is_failure:
            log.warning("the broker refused the retained view on %s: %s", topic, rc)

    # -- commands ----------------------------------------------------------------------

    async def _command_loop(self, conn: Connection) -> None:
        while True:
            m = await conn.messages.get()
            if m.topic == self.topics.receipt:
                if self.delivery.take(m.payload) and self.delivery.receipt:
                    r = self.delivery.receipt
                    self.events.emit(
                        EventKind.RECEIPT, sess=r.get("sess"), contacts=r.get("contacts", [])
                    )
                conn.ack(m)
                continue
            reply = await self._command(m)
            if m.response_topic:
                with contextlib.suppress(MqttError):
                    conn.publish(m.response_topic, dumps(reply), correlation=m.correlation)
            conn.ack(m)

    async def _command(self, m: Inbound) -> dict[str, Any]:
        self.stats.commands += 1
        cmd_id: str | None = None
        try:
            if m.retain:
                raise CommandError(
                    "retained commands are ignored (they would run again at every "
                    "reconnect): publish commands without the retain flag"
                )
            cmd = parse_command(m.payload)
            cmd_id = cmd.id
            if cmd.id is not None and cmd.id in self._done_commands:
                return self._done_commands[cmd.id]  # a redelivery: answered, not re-run
            if self._commands is None:
                raise CommandError("this device does not take commands")
            result = await self._commands(cmd)
            reply: dict[str, Any] = {"id": cmd.id, "cmd": cmd.name.value, "ok": True, **result}
            log.info("command %s%s done", cmd.name.value, f" ({cmd.by})" if cmd.by else "")
        except CommandError as exc:
            self.stats.commands_rejected += 1
            log.warning("command on %s rejected: %s", m.topic, exc)
            reply = {"id": cmd_id or command_id(m.payload), "ok": False, "error": str(exc)}
        except Exception as exc:  # a command must never take the daemon down
            self.stats.commands_rejected += 1
            log.exception("command on %s failed", m.topic)
            reply = {"id": cmd_id, "ok": False, "error": f"internal error: {exc}"}
        self.events.emit(
            EventKind.COMMAND,
            cmd=reply.get("cmd"),
            id=reply.get("id"),
            ok=reply["ok"],
            **({"error": reply["error"]} if not reply["ok"] else {}),
        )
        if cmd_id is not None:
            self._done_commands[cmd_id] = reply
            while len(self._done_commands) > 256:
                self._done_commands.popitem(last=False)
        return reply

    def _note_error(self, text: str, level: Callable[..., None]) -> None:
        self.stats.last_error = text
        level("%s", text)


class _Budget:
    """Routine messages in flight: at most ``count`` of them and ``size`` bytes (one
    message larger than ``size`` may go alone)."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self._bytes = 0
        self._n = 0
        self._freed = asyncio.Event()

    async def acquire(self, nbytes: int) -> None:
        while not (self._n == 0 or (self._n < self.count and self._bytes + nbytes <= self.size)):
            self._freed.clear()
            await self._freed.wait()
        self._n += 1
        self._bytes += nbytes

    def release(self, nbytes: int) -> None:
        self._n -= 1
        self._bytes -= nbytes
        self._freed.set()


def _too_large(msg: Message, rc: ReasonCode) -> bool:
    """The broker refused ``msg`` for its size, and it can be split."""
    return bool(rc.value == PACKET_TOO_LARGE and len(msg.seqs) > 1)


async def _raise_when_closed(conn: Connection) -> None:
    why = await asyncio.shield(conn.closed)
    raise MqttError(why)


__all__ = ["Message", "Uplink", "UplinkConfig", "UplinkStats", "routine_due", "sos_message_id"]
