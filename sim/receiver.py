"""The contacts' side of the wire, for tests, drills and the demo: subscribes to a device's
topics, decodes every record, and proves that nothing was lost (a :class:`SeqLedger` per
outbox). It keeps a persistent session, so what the broker queued while it was away
arrives when it is back, and it reconnects by itself when the broker restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sosbeacon.device.mqtt import BrokerConfig, Connection, Inbound, MqttError
from sosbeacon.device.wire import (
    Received,
    SealError,
    SeqLedger,
    Topics,
    decode_sos,
    decode_track,
    is_sealed,
    owntracks_open,
    unseal,
)

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    topic: str
    payload: bytes
    retain: bool
    at: float
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry: int | None = None


@dataclass
class Receiver:
    broker: BrokerConfig
    topics: Topics
    owntracks_topic: str | None = None
    #: every record received, in arrival order (duplicates included)
    records: list[Received] = field(default_factory=list)
    ledgers: dict[str, SeqLedger] = field(default_factory=dict)
    #: the latest payload per topic (retained views: status, sos, OwnTracks)
    latest: dict[str, Delivery] = field(default_factory=dict)
    deliveries: int = 0
    #: every message, in arrival order
    history: list[Delivery] = field(default_factory=list)
    undecodable: int = 0
    #: the device's key (``uplink.key_file``): sealed payloads are opened with it, and
    #: kept opened in ``latest`` and ``history``
    key: bytes | None = None
    #: OwnTracks' key (``owntracks_key`` of the passphrase): its envelopes are opened
    owntracks_key: bytes | None = None
    #: payloads that arrived sealed, and those that would not open
    sealed: int = 0
    unopened: int = 0
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _conn: Connection | None = None

    async def start(self) -> Receiver:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(connected))
        async with asyncio.timeout(15):
            await connected.wait()
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.disconnect()

    async def _run(self, connected: asyncio.Event) -> None:
        while True:
            conn = Connection(self.broker)
            self._conn = conn
            try:
                await conn.connect(clean_start=False)
                ot = f"{self.owntracks_topic}/#" if self.owntracks_topic else None
                for topic in (f"{self.topics.base}/#", ot):
                    if topic:
                        await conn.subscribe(topic)
                connected.set()
                while True:
                    get = asyncio.ensure_future(conn.messages.get())
                    either: set[asyncio.Future[Any]] = {get, conn.closed}
                    try:
                        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    except BaseException:
                        get.cancel()  # we are being stopped: leave no waiter behind
                        raise
                    if not get.done():
                        get.cancel()
                        raise MqttError(conn.closed.result())
                    m = get.result()
                    self._take(m)
                    conn.ack(m)
            except MqttError as exc:
                log.info("receiver: %s; reconnecting", exc)
            finally:
                conn.close()
            await asyncio.sleep(0.2)

    def _take(self, m: Inbound) -> None:
        topic, payload = m.topic, self._opened(m.topic, m.payload)
        self.deliveries += 1
        d = Delivery(topic, payload, m.retain, time.monotonic(), m.user_properties, m.expiry)
        self.latest[topic] = d
        self.history.append(d)
        try:
            got: list[Received] = []
            if topic == self.topics.track:
                got = decode_track(payload)
            elif topic in (self.topics.sos, self.topics.voice) and payload:
                got = [decode_sos(payload)]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.undecodable += 1
            log.warning("receiver: undecodable message on %s: %s", topic, exc)
            got = []
        for r in got:
            self.ledgers.setdefault(r.box, SeqLedger()).add([r])
        self.records.extend(got)
        self._changed.set()

    def _opened(self, topic: str, payload: bytes) -> bytes:
        """``payload`` opened with the keys given; as it is when it is not sealed (the
        caller sees that in ``sealed``) or will not open (counted in ``unopened``)."""
        try:
            if is_sealed(payload) and self.key is not None:
                self.sealed += 1
                return unseal([self.key], payload)[0]
            if self.owntracks_key is not None and payload.startswith(b'{"_type":"encrypted"'):
                self.sealed += 1
                return owntracks_open(self.owntracks_key, payload)
        except SealError as exc:
            self.unopened += 1
            log.warning("receiver: a payload on %s does not open: %s", topic, exc)
        return payload

    # -- what tests and drills ask ----------------------------------------------------

    def ledger(self) -> SeqLedger:
        """The one ledger (a device with one outbox); empty if nothing arrived yet."""
        if len(self.ledgers) > 1:
            raise AssertionError(f"records from {len(self.ledgers)} outboxes: {list(self.ledgers)}")
        return next(iter(self.ledgers.values()), SeqLedger())

    def json(self, topic: str) -> Any:
        d = self.latest.get(topic)
        return None if d is None or not d.payload else json.loads(d.payload)

    async def wait_until(self, cond: Callable[[], bool], within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_seqs(self, upto: int, within: float = 30.0) -> SeqLedger:
        """Until every seq up to ``upto`` arrived or is accounted for by a gap record."""

        def done() -> bool:
            led = self.ledger() if self.ledgers else SeqLedger()
            return led.last >= upto and not led.missing()

        await self.wait_until(done, within)
        return self.ledger()
