"""Sending: two loops per connection, and the settling of every message.

* SOS events, last gasp and live positions go at once (or every ``sos_interval``);
  routine records wait until ``batch_count`` of them or the oldest is ``batch_interval``
  old (:func:`routine_due`), then the backlog drains in large ``track`` messages.
  Routine messages in flight are capped in count and bytes (:class:`Window`), so an SOS
  never queues behind a backlog on a slow link; while an SOS record is on its way out,
  the routine loop takes and publishes nothing (:mod:`device.outbox.rightofway`).
* Records leave the outbox only at a PUBACK with a success reason code. A failure code
  (not authorised 0x87, quota 0x97, ...) keeps them, says why and backs off; one too
  large is formed again, smaller, at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from sosbeacon.device.backoff import Backoff
from sosbeacon.device.clock import Clock
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.mqtt import Connection, MqttError
from sosbeacon.device.outbox import Outbox, OutboxError, Pending
from sosbeacon.device.receipts import NO_SUBSCRIBERS, Delivery
from sosbeacon.device.records import Item, Priority, RecordKind, seqs_of
from sosbeacon.device.uplink.config import UplinkConfig, UplinkStats
from sosbeacon.device.uplink.credit import RelayCredit
from sosbeacon.device.uplink.packer import Message, Packer
from sosbeacon.device.uplink.sizelimit import PACKET_TOO_LARGE
from sosbeacon.device.uplink.views import RetainedViews
from sosbeacon.device.wire import seq_ranges_text

log = logging.getLogger(__package__)


def routine_due(p: Pending, now: datetime, cfg: UplinkConfig) -> float | None:
    """Seconds until the routine backlog should go (0: now), or ``None`` if empty. Ages
    are from when the oldest record was committed, by the device's clock (``now`` is
    that clock too), never from a receiver's fix time. A commit time ahead of ``now``
    means the system clock was set back since: the backlog goes now rather than wait
    for the clock to catch up."""
    if p.voice:
        return 0.0  # a voice note goes at once, paced like the backlog behind it
    if p.routine == 0:
        return None
    if p.routine >= cfg.batch_count or p.oldest_routine is None:
        return 0.0
    age = (now - p.oldest_routine).total_seconds()
    if age < 0:
        return 0.0
    return max(0.0, cfg.batch_interval - age)


async def until(clock: Clock, event: asyncio.Event, seconds: float | None) -> None:
    """Until ``event`` is set or ``seconds`` pass on ``clock`` (None: no time limit)."""
    await until_either(clock, event, None, seconds)


async def until_either(
    clock: Clock, one: asyncio.Event, other: asyncio.Event | None, seconds: float | None
) -> None:
    """Until ``one`` or ``other`` is set, or ``seconds`` pass on ``clock``."""
    if seconds is None and other is None:
        await one.wait()
        return
    jobs: set[asyncio.Future[object]] = {asyncio.ensure_future(one.wait())}
    if other is not None:
        jobs.add(asyncio.ensure_future(other.wait()))
    if seconds is not None:
        jobs.add(asyncio.ensure_future(clock.sleep(seconds)))
    try:
        await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in jobs:
            job.cancel()


class Window:
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


class Sender:
    def __init__(
        self,
        *,
        config: UplinkConfig,
        outbox: Outbox,
        clock: Clock,
        packer: Packer,
        views: RetainedViews,
        stats: UplinkStats,
        events: Events,
        delivery: Delivery,
        credit: RelayCredit,
        sos_active: Callable[[], bool],
        rng: random.Random,
        note: Callable[[str, Callable[..., None]], None],
        note_once: Callable[[str, str], None],
    ) -> None:
        self.config = config
        self._outbox = outbox
        self._clock = clock
        self.packer = packer
        self.limit = packer.limit
        self._views = views
        self.stats = stats
        self.events = events
        self.delivery = delivery
        self.credit = credit
        self._sos_active = sos_active
        self._note = note
        self._note_once = note_once
        self._refused = Backoff(base=config.backoff_min, cap=config.backoff_max, rng=rng)
        self._pause_until = 0.0
        #: messages published and not yet answered, on the current connection
        self.settling: set[asyncio.Task[None]] = set()
        #: set when the broker answered a message with a failure reason code
        self.refused = asyncio.Event()
        #: set whenever the broker answered a message (clear it, look, then wait)
        self.acked = asyncio.Event()

    def loops(self, conn: Connection, window: int) -> list[Any]:
        """The coroutines that send on ``conn``: urgent records, and routine ones within
        a window of ``window`` messages."""
        budget = Window(self.config.inflight_bytes, window)
        return [
            self._send_loop(conn, urgent=True, budget=None),
            self._send_loop(conn, urgent=False, budget=budget),
        ]

    async def settle_all(self) -> None:
        """The connection ended: what is unanswered goes back to pending (by the
        caller's requeue)."""
        for t in self.settling:
            t.cancel()
        await asyncio.gather(*self.settling, return_exceptions=True)

    async def _send_loop(self, conn: Connection, *, urgent: bool, budget: Window | None) -> None:
        wake = self.credit.waker()
        try:
            await self._sending(conn, urgent=urgent, budget=budget, wake=wake)
        finally:
            self.credit.drop(wake)

    async def _sending(
        self, conn: Connection, *, urgent: bool, budget: Window | None, wake: asyncio.Event
    ) -> None:
        cfg = self.config
        credit = self.credit
        watch = self._outbox.watch()
        way = self._outbox.right_of_way
        last_sent = -math.inf
        first, last = (
            (Priority.SOS, Priority.LIVE) if urgent else (Priority.VOICE, Priority.ROUTINE)
        )
        # urgent: everything waiting; routine: two messages' worth at a time
        limit = cfg.max_batch * (4 if urgent else 2)
        # no need to ask the outbox whether records are due when SOS records go at once,
        # or when the last take was full (a backlog drains): one step less on the way
        at_once = urgent and not cfg.sos_interval
        more = False
        while True:
            watch.clear()
            wake.clear()
            if not urgent and not credit.has_room(live=False):
                # the relay has not confirmed enough of what went: the backlog waits in
                # the outbox, the broker's queue does not grow (device/uplink/credit.py);
                # a message passed over (at a relay that is down) leaves the window in time
                await until(self._clock, wake, credit.next_stall())
                continue
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
                    await until(self._clock, watch, wait)
                    continue
            # live positions wait in the outbox too while the relay is behind; SOS events
            # never do
            room = credit.room(live=urgent)
            held = urgent and room == 0
            upto = Priority.SOS if held else last
            # with room for one more message, take one message's worth
            n = cfg.max_batch if room == 1 else limit
            if not urgent:
                await way.wait()  # an SOS record on its way goes first (moments at most)
            stored = await self._outbox.take(n, first=first, last=upto, run=cfg.max_batch)
            more = len(seqs_of(stored)) >= n  # more when a whole message came along
            if not stored:
                if at_once or held:
                    await until_either(
                        self._clock, watch, wake if held else None,
                        credit.next_stall() if held else None,
                    )  # fmt: skip
                continue
            last_sent = self._clock.monotonic()
            for msg in await self.pack(stored):
                if budget is not None:
                    await budget.acquire(len(msg.payload))
                if not urgent:
                    await way.wait()  # an SOS record taken meanwhile goes first
                if msg.topic != self.packer.topics.sos:  # SOS events are never held back
                    credit.sent(msg.seqs, live=urgent)
                fut = conn.publish(
                    msg.topic,
                    msg.payload,
                    retain=msg.retain,
                    expiry=msg.expiry,
                    user=[("msg_id", msg.msg_id), ("seq", seq_ranges_text(msg.seqs))],
                    utf8=self.packer.seal is None,
                )
                self.stats.published += 1
                self.limit.sent(len(msg.payload))
                fut.add_done_callback(functools.partial(self._learn_size, msg))
                task = asyncio.create_task(self._settle(conn, msg, fut, budget))
                self.settling.add(task)
                task.add_done_callback(self._answered)
            if urgent:
                way.passed()

    async def pack(self, stored: list[Item]) -> list[Message]:
        """``stored`` as messages (:class:`Packer`): expired records purged (a gap record
        replaces them; never sent), new message ids bound before anything is sent."""
        now = self._clock.now()
        packed = await self.packer.pack(
            stored,
            box=self._outbox.outbox_id,
            now=now,
            retained_seq=self._views.retained_seq,
            cut=self._outbox.cut,
        )
        if packed.expired:
            try:
                await self._outbox.purge(now)
            except OSError as exc:  # a full disk: deleted later, never sent meanwhile
                self._note_once("purge", str(exc))
        if packed.new:
            try:
                await self._outbox.bind({m.msg_id: m.seqs for m in packed.new})
            except OutboxError as exc:
                # A full disk: the messages go anyway. Unbound, a resend after a restart
                # would carry new ids (receivers still drop duplicates by seq).
                self._note_once("bind", f"message ids not stored ({exc}); sending anyway")
        return packed.messages

    async def _settle(
        self, conn: Connection, msg: Message, fut: asyncio.Future[Any], budget: Window | None
    ) -> None:
        try:
            rc = await fut
        except MqttError:
            return  # the connection is gone; everything in flight goes back to pending
        finally:
            if budget is not None:
                budget.release(len(msg.payload))
        if not rc.is_failure:
            if rc.value == NO_SUBSCRIBERS and msg.topic == self.packer.topics.sos:
                for s in msg.records:
                    if s.kind is RecordKind.SOS_START and s.session:
                        self.delivery.no_subscribers(s.session)
            # shielded: a connection lost meanwhile must not cut the bookkeeping short
            await asyncio.shield(self._delivered(msg))
            await self._views.delivered(conn, msg)
            return
        name = str(rc)
        self.stats.failures[name] = self.stats.failures.get(name, 0) + 1
        self.refused.set()
        # A message too large for the broker needs no backoff: _learn_size lowered the
        # cap, and its records go again in smaller messages.
        if not _too_large(msg, rc):
            delay = self._refused.next(self.config.backoff_max_sos if self._sos_active() else None)
            self._pause_until = max(self._pause_until, self._clock.monotonic() + delay)
            self._note(
                f"the broker refused message {msg.msg_id} (seq {seq_ranges_text(msg.seqs)}) on "
                f"{msg.topic}: {rc}. The records stay in the outbox; retrying in {delay:.1f}s"
                + (" (check the broker's ACL for this device)" if rc.value == 0x87 else ""),
                log.error,
            )
        await self._outbox.requeue(msg.seqs)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self.settling.discard(task)
        self.acked.set()
        if not task.cancelled() and task.exception() is not None:
            # a bug: said here, never left as "Task exception was never retrieved"
            log.error("settling a message failed", exc_info=task.exception())

    async def _delivered(self, msg: Message) -> None:
        await self._outbox.ack(msg.seqs)
        first = msg.records[0]
        lifecycle = (
            {"record": first.kind.value, "session": first.session}
            if msg.topic == self.packer.topics.sos
            else {}
        )
        self.events.emit(
            EventKind.RECORDS, what="acked", count=len(msg.seqs),
            seq=seq_ranges_text(msg.seqs), **lifecycle,
        )  # fmt: skip
        self.stats.records_acked += len(msg.seqs)
        self.acked.set()
        self.limit.acknowledged()
        self._refused.reset()

    def _learn_size(self, msg: Message, fut: asyncio.Future[Any]) -> None:
        """At the PUBACK itself (Mosquitto may drop the connection right after a "packet
        too large", before any task gets to run)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        if _too_large(msg, fut.result()):
            self.limit.too_large(len(msg.payload))


def _too_large(msg: Message, rc: ReasonCode) -> bool:
    """The broker refused ``msg`` for its size, and it can be split."""
    return bool(rc.value == PACKET_TOO_LARGE and len(msg.seqs) > 1)
