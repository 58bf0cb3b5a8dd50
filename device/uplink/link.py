"""The connection's life: connect, serve, reconnect.

* Reconnects back off exponentially with jitter, capped at ``backoff_max_sos`` while an
  SOS is active; paho's keepalive notices a black-holed link. A connection lost with
  messages in flight puts them back to pending; they are resent with the same ids.
* Retained ``status`` (online; the will says offline).
* While connected: the two send loops (:class:`~device.uplink.sender.Sender`), and the
  inbound messages: the relay's receipts (:class:`~device.receipts.Delivery`) and
  commands, answered on the MQTT v5 response topic and acknowledged to the broker only
  once handled (:class:`~device.commands.CommandDesk`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import replace

from sosbeacon.device.backoff import Backoff
from sosbeacon.device.clock import Clock
from sosbeacon.device.commands import CommandDesk, CommandHandler
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.mqtt import (
    BrokerConfig,
    Connack,
    Connection,
    ConnectRefused,
    Inbound,
    MqttError,
    Will,
)
from sosbeacon.device.outbox import Outbox, OutboxError
from sosbeacon.device.receipts import Delivery
from sosbeacon.device.uplink.config import UplinkConfig, UplinkStats
from sosbeacon.device.uplink.credit import RelayCredit
from sosbeacon.device.uplink.homeassistant import HomeAssistant, HomeAssistantConfig
from sosbeacon.device.uplink.packer import Packer
from sosbeacon.device.uplink.sender import Sender, until_either
from sosbeacon.device.uplink.sizelimit import SizeLimit
from sosbeacon.device.uplink.views import RetainedViews
from sosbeacon.device.wire import (
    SEAL_OVERHEAD,
    SealError,
    Topics,
    dumps,
    owntracks_encrypted,
    owntracks_key,
    read_key,
    read_passphrase,
    seal,
    status_payload,
    unseal,
)

log = logging.getLogger(__package__)


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
        homeassistant: HomeAssistantConfig | None = None,
    ) -> None:
        self.config = config
        #: link up and down, commands, receipts (``sosctl events``)
        self.events = events or Events()
        self.topics = Topics.for_device(config.device_id, config.prefix)
        self.broker = broker if broker.client_id else replace(broker, client_id=config.device_id)
        self._outbox = outbox
        self._clock = clock
        self._sos_active = sos_active
        rng = rng or random.Random()
        self._reconnect = Backoff(base=config.backoff_min, cap=config.backoff_max, rng=rng)
        self.stats = UplinkStats()
        #: what reached whom (the relay's receipts; an SOS nobody was subscribed to)
        self.delivery = Delivery()
        self.commands = CommandDesk(commands, self.events)
        #: the key shared with the relay (end-to-end encryption), or None
        self.key = read_key(config.key_file) if config.key_file else None
        owntracks = (
            f"owntracks/sosbeacon/{config.device_id}"
            if config.owntracks_topic is None
            else config.owntracks_topic
        )
        ot_key = None
        if config.owntracks_passphrase_file:
            ot_key = owntracks_key(read_passphrase(config.owntracks_passphrase_file))
        if self.key is not None and owntracks and ot_key is None:
            # an OwnTracks location in the clear would undo the sealing of everything else
            log.warning(
                "OwnTracks output (%s) is off: payloads are sealed end to end "
                "(uplink.key_file); set uplink.owntracks_passphrase_file to send it with "
                "OwnTracks' own encryption",
                owntracks,
            )
            owntracks = ""
        self.views = RetainedViews(
            outbox.state,
            clock,
            owntracks_topic=owntracks,
            ha=(
                HomeAssistant(homeassistant, self.topics, config.device_id)
                if homeassistant is not None and homeassistant.enabled
                else None
            ),
            encrypt=None if ot_key is None else functools.partial(owntracks_encrypted, ot_key),
            tid=(config.owntracks_tid or config.device_id)[:2],
            note=self._note_once,
        )
        key = self.key
        room = SEAL_OVERHEAD if key is not None else 0
        self.limit = SizeLimit(config.max_message_bytes - room)
        packer = Packer(
            self.topics,
            self.limit,
            max_batch=config.max_batch,
            routine_expiry=config.routine_expiry,
            seal=None if key is None else functools.partial(seal, key),
        )
        #: what the relay has not confirmed yet: the end-to-end window
        self.credit = RelayCredit(
            routine=config.relay_window,
            live=config.relay_window_live,
            patience=config.relay_patience,
            stall=config.relay_stall,
            clock=clock,
        )
        self.sender = Sender(
            config=config,
            outbox=outbox,
            clock=clock,
            packer=packer,
            views=self.views,
            stats=self.stats,
            events=self.events,
            delivery=self.delivery,
            credit=self.credit,
            sos_active=sos_active,
            rng=rng,
            note=self._note_error,
            note_once=self._note_once,
        )
        #: set while connected and serving
        self.connected = asyncio.Event()
        #: set after a failed connection attempt or a lost connection, until connected
        self.disconnected = asyncio.Event()
        #: set when the broker answered a message with a failure reason code
        self.refused = self.sender.refused
        #: set whenever the broker answered a message (clear it, look, then wait)
        self.acked = self.sender.acked
        #: warnings said on this connection (:meth:`_note_once`)
        self._said: set[str] = set()
        #: set when the network came back (:meth:`network_up`), until a connection is made
        self._network_back = asyncio.Event()
        #: the broker refused the last connection (credentials, ACL): a returning network
        #: changes nothing about that, so its backoff stands
        self._refused_last = False
        self._conn: Connection | None = None

    @property
    def owntracks_topic(self) -> str:
        return self.views.owntracks_topic

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect: forever (cancel to stop, with a clean goodbye)."""
        await self.views.load()
        outage = False
        while True:
            conn = Connection(self.broker, will=self._will())
            self._network_back.clear()  # this attempt is the one the network was back for
            try:
                connack = await conn.connect()
            except ConnectRefused as exc:
                self._refused_last = True
                self._note_error(str(exc), log.error)
            except MqttError as exc:
                if not outage:
                    self._note_error(f"{exc}; buffering in the outbox and retrying", log.warning)
                    self.events.emit(EventKind.LINK, state="down", why=str(exc), lost=False)
                outage = True
            else:
                outage = False
                self._refused_last = False
                self._reconnect.reset()
                self._conn = conn
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
                    self._conn = None
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
            if not self.sender.settling and not await self._outbox.has_undelivered():
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

    def network_up(self) -> None:
        """The network came back (NetworkManager, the modem): a wait to reconnect ends
        at once. A broker that refused the last connection keeps its backoff."""
        self._network_back.set()

    def network_down(self) -> None:
        """The network went away: the connection is dropped now rather than left to the
        keepalive, so everything in flight goes back to pending and the next connection,
        the moment the network returns, resends it."""
        self._network_back.clear()
        if self._conn is not None:
            self._conn.close("the network went down")

    async def _wait_reconnect(self) -> None:
        """Back off; an SOS arriving meanwhile shortens the wait to the SOS cap, and the
        network coming back ends it (unless the broker refused)."""
        sos_cap = self.config.backoff_max_sos
        delay = self._reconnect.next(sos_cap if self._sos_active() else None)
        start = self._clock.monotonic()
        deadline = start + delay
        watch = self._outbox.watch()
        while (left := deadline - self._clock.monotonic()) > 0:
            if self._network_back.is_set() and not self._refused_last:
                self._reconnect.reset()
                return
            watch.clear()
            if self._sos_active() and deadline - start > sos_cap:
                deadline = start + min(delay, sos_cap)
                continue
            await until_either(self._clock, watch, self._network_back, left)

    async def _serve(self, conn: Connection, connack: Connack) -> None:
        self.stats.connects += 1
        self.limit.connected(connack.maximum_packet)
        online = status_payload("online", box=self._outbox.outbox_id, at=self._clock.now())
        rc = await conn.publish(self.topics.status, online, retain=True)
        if rc.is_failure:
            log.error(
                "the broker refused the status message on %s (%s): check its ACL for this device",
                self.topics.status,
                rc,
            )
        subscriptions = [(self.topics.receipt, "the relay's receipts")]
        if self.commands.takes_commands:
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
        tasks = [*self.sender.loops(conn, window), self._inbound(conn), _raise_when_closed(conn)]
        self._said.clear()
        self.views.connected(conn)
        try:
            async with asyncio.TaskGroup() as tg:
                for job in tasks:
                    tg.create_task(job)
        except ExceptionGroup as group:
            # the first failure is why this connection ended (the others are its echo)
            raise group.exceptions[0] from None
        finally:
            self.views.disconnected()
            await self.sender.settle_all()
            self.limit.connection_ended()

    async def forget_home_assistant(self) -> bool:
        """Remove the device from Home Assistant (``sosctl purge``); False when not
        connected now or the broker refused (the owner is told to purge again)."""
        conn = self._conn
        if conn is None:
            return self.views.ha is None
        return await self.views.forget_home_assistant(conn)

    def _opened(self, m: Inbound) -> Inbound | None:
        """``m`` with its payload opened under our key (as it is, without a key); None
        when it must not be believed: in the clear, or not opening (counted, logged
        without its content)."""
        if self.key is None or (m.topic == self.topics.receipt and not m.payload):
            return m  # no encryption; or a receipt withdrawn (an empty retained payload)
        try:
            plain, _ = unseal([self.key], m.payload)
        except SealError as exc:
            self.stats.unsealed_refused += 1
            log.warning(
                "ignored a message on %s that does not open under this device's key (%s): "
                "%d refused so far", m.topic, exc, self.stats.unsealed_refused,
            )  # fmt: skip
            return None
        return replace(m, payload=plain)

    def _reply(self, payload: bytes) -> bytes:
        return payload if self.key is None else seal(self.key, payload)

    async def _send_again(self, seqs: list[int]) -> None:
        """Records the relay did not store within the patience: those the outbox still
        holds go again (device/uplink/credit.py)."""
        if not seqs:
            return
        try:
            held = await self._outbox.resend(seqs)
        except OutboxError as exc:  # a full disk: they stay on the device, for export
            log.warning("records the relay did not store could not be queued again: %s", exc)
            held = 0
        self.credit.sent_again(seqs, held)

    async def _inbound(self, conn: Connection) -> None:
        while True:
            raw = await conn.messages.get()
            m = self._opened(raw)
            if m is None:
                conn.ack(raw)
                continue
            if m.topic == self.topics.receipt:
                if self.delivery.take(m.payload) and self.delivery.receipt:
                    r = self.delivery.receipt
                    self.credit.receipt(self._outbox.outbox_id, r)
                    await self._send_again(self.credit.due())
                    self.events.emit(
                        EventKind.RECEIPT, sess=r.get("sess"), contacts=r.get("contacts", [])
                    )
                conn.ack(m)
                continue
            reply = await self.commands.answer(m)
            self.stats.commands = self.commands.received
            self.stats.commands_rejected = self.commands.rejected
            if m.response_topic:
                with contextlib.suppress(MqttError):
                    conn.publish(
                        m.response_topic, self._reply(dumps(reply)), correlation=m.correlation,
                        utf8=self.key is None,
                    )  # fmt: skip
            conn.ack(m)

    def _note_once(self, key: str, text: str) -> None:
        """A warning said once per connection, not once per message."""
        if key not in self._said:
            self._said.add(key)
            self._note_error(text, log.warning)

    def _note_error(self, text: str, level: Callable[..., None]) -> None:
        self.stats.last_error = text
        level("%s", text)


async def _raise_when_closed(conn: Connection) -> None:
    why = await asyncio.shield(conn.closed)
    raise MqttError(why)
