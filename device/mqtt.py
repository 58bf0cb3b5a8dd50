"""One MQTT v5 connection on the asyncio event loop: paho-mqtt 2.x underneath, our glue on
top.

Why not aiomqtt: its ``publish`` does not hand back the PUBACK reason code, and the
outbox may delete a record only on a *success* code. The glue follows aiomqtt's way of
driving paho without a thread: the socket is watched with ``loop.add_reader`` /
``add_writer`` and paho's ``loop_read`` / ``loop_write`` / ``loop_misc`` are called from
the loop (``publish`` also writes at once). Only the blocking part of connecting (DNS,
TCP, TLS handshake) runs in a worker thread.

A :class:`Connection` is used for one connection only: after it is lost, make a new one.
paho's own in-memory resend queue therefore never comes into play; what was not
acknowledged is resent from the durable outbox, with the same message ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sosbeacon.device.errors import SosbeaconError

log = logging.getLogger(__name__)

#: paho's keepalive check runs this long after it falls due (a clock read a moment early
#: would find nothing to do yet)
_MISC_SLACK = 0.01


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS with certificate and host name verification (never switched off)."""

    #: CA bundle that signed the broker's certificate; ``None`` uses the system's CAs
    ca_file: str | None = None
    #: client certificate and key, for brokers that authenticate devices by certificate
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "localhost"
    port: int = 1883
    #: the MQTT client id; the device id unless set
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None
    #: seconds; a silent link is noticed within about twice this
    keepalive: int = 30
    connect_timeout: float = 15.0
    #: how long the broker keeps the device's session (its ``cmd`` subscription and the
    #: commands queued for it) while the device is offline
    session_expiry: int = 24 * 3600


class MqttError(SosbeaconError):
    """The connection failed or was lost; the message says why."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        self.reason = reason
        hint = {
            0x86: "check the username and password",
            0x87: "check the username and password or the client certificate, and that "
            "the broker allows this client",
            0x85: "the client id is not accepted by the broker",
            0x8A: "the client id is banned by the broker",
        }.get(reason.value, "see the broker's log")
        super().__init__(f"broker refused the connection: {reason} ({hint})")


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message received on a subscription. Acknowledge QoS 1 messages with
    :meth:`Connection.ack` once handled (a crash before that gets it redelivered)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    response_topic: str | None
    correlation: bytes | None
    user_properties: tuple[tuple[str, str], ...] = ()
    #: seconds of message expiry left, if the publisher set one
    expiry: int | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    #: how many QoS 1 messages the broker accepts in flight (paho itself sends at most
    #: 20 at a time and queues the rest)
    receive_maximum: int
    #: the largest packet the broker accepts, in bytes
    maximum_packet: int | None


def _properties(packet: int, **values: Any) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        if value is not None:
            setattr(props, name, value)
    return props


class Connection:
    def __init__(self, config: BrokerConfig, *, will: Will | None = None) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        c.connect_timeout = config.connect_timeout
        if config.username is not None:
            c.username_pw_set(config.username, config.password)
        if config.tls is not None:
            c.tls_set_context(config.tls.context())
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self._client = c
        self._sock: socket.socket | None = None
        self._attached = False
        self._want_write = False
        self._connack: asyncio.Future[Connack] = self._future()
        #: resolved with the reason when the connection ends
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._pubs: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subs: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self.messages: asyncio.Queue[Inbound] = asyncio.Queue()
        self._misc: asyncio.Task[None] | None = None

    def _future(self) -> asyncio.Future[Any]:
        """A future that may fail with nobody left to await it (the connection dropped
        after its waiter gave up): that is expected, not worth a log line."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return fut

    # -- connecting --------------------------------------------------------------------

    async def connect(self, *, clean_start: bool = False) -> Connack:
        cfg = self.config
        props = _properties(PacketTypes.CONNECT, SessionExpiryInterval=cfg.session_expiry)
        try:
            rc = await self._loop.run_in_executor(
                None,
                functools.partial(
                    self._client.connect,
                    cfg.host,
                    cfg.port,
                    cfg.keepalive,
                    clean_start=clean_start,
                    properties=props,
                ),
            )
        except ssl.SSLCertVerificationError as exc:
            raise MqttError(
                f"TLS: the broker's certificate was not accepted ({exc.verify_message}); "
                "check mqtt.tls.ca_file and that mqtt.host matches the certificate"
            ) from exc
        except ssl.SSLError as exc:
            raise MqttError(
                f"TLS handshake with {cfg.host}:{cfg.port} failed ({exc}); check the client "
                "certificate and key (mqtt.tls) and that the broker's listener uses TLS"
            ) from exc
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot reach the broker at {cfg.host}:{cfg.port}: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.close()
            raise MqttError(f"connect failed: {paho.error_string(rc)}")
        self._attach()
        self._misc = asyncio.create_task(self._run_misc())
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                return await asyncio.shield(self._connack)
        except TimeoutError:
            self.close()
            raise MqttError(
                f"no CONNACK from {cfg.host}:{cfg.port} within {cfg.connect_timeout}s"
            ) from None
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        """Watch the socket from the loop (only after the worker thread is done with it)."""
        sock = self._sock
        if sock is None:
            return
        self._attached = True
        self._loop.add_reader(sock.fileno(), self._readable)
        if self._want_write or self._client.want_write():
            self._loop.add_writer(sock.fileno(), self._writable)

    def _readable(self) -> None:
        c = self._client
        rc = c.loop_read()
        # TLS may hold decrypted bytes that the file descriptor no longer signals.
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket):
            if sock.pending() <= 0 or self._sock is not sock:
                break
            rc = c.loop_read()

    def _writable(self) -> None:
        self._client.loop_write()

    async def _run_misc(self) -> None:
        """paho's housekeeping: keepalive pings, and closing a link that stopped
        answering. It runs when it can have something to do (:meth:`_misc_due`), not
        every second: an idle beacon is woken for it once per keepalive."""
        while not self.closed.done():
            await asyncio.sleep(self._misc_due())
            self._client.loop_misc()

    def _misc_due(self) -> float:
        """Seconds until paho's ``loop_misc`` can act: it pings, or gives up on a ping
        that went unanswered, only once ``keepalive`` seconds have passed since it last
        sent, last received or pinged (paho 2.x's own marks, on its clock). A paho
        without those marks gets every second, as before."""
        c = self._client
        try:
            marks = [c._last_msg_out, c._last_bytes_received]
            if c._ping_t:
                marks.append(c._ping_t)
            keepalive = float(c._keepalive)
        except AttributeError:
            return 1.0
        if keepalive <= 0:
            return 60.0  # no keepalive: nothing for loop_misc to do, looked at again
        due = min(marks) + keepalive - paho.time_func() + _MISC_SLACK
        return min(max(due, _MISC_SLACK), keepalive)

    # -- paho callbacks (all on the loop thread once attached) ------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._attached:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
        self._attached = False
        self._sock = None
        # paho closes the socket first and says why just after (on_disconnect: "Keep
        # alive timeout" for a link that stopped answering): let the reason win
        if not self._loop.is_closed():
            self._loop.call_soon(self._finish, "socket closed")

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._want_write = True
        if self._attached:
            self._loop.add_writer(sock.fileno(), self._writable)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._want_write = False
        if self._attached:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock.fileno())

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if self._connack.done():
            return
        if rc.is_failure:
            self._connack.set_exception(ConnectRefused(rc))
            return
        receive_max = getattr(props, "ReceiveMaximum", 65535) if props else 65535
        max_packet = getattr(props, "MaximumPacketSize", None) if props else None
        self._connack.set_result(Connack(bool(flags.session_present), receive_max, max_packet))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._finish(f"disconnected: {rc}")

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        fut = self._pubs.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(rc)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        fut = self._subs.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(rcs))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        self.messages.put_nowait(
            Inbound(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                retain=bool(msg.retain),
                mid=msg.mid,
                response_topic=getattr(props, "ResponseTopic", None) if props else None,
                correlation=bytes(corr) if corr is not None else None,
                user_properties=tuple(getattr(props, "UserProperty", ()) if props else ()),
                expiry=getattr(props, "MessageExpiryInterval", None) if props else None,
            )
        )

    def _finish(self, why: str) -> None:
        if self._loop.is_closed():
            return  # paho closing its socket as it is garbage-collected: nobody waits
        if not self.closed.done():
            self.closed.set_result(why)
        err = MqttError(f"connection lost ({why})")
        if not self._connack.done():
            self._connack.set_exception(err)
        futures: list[asyncio.Future[Any]] = [*self._pubs.values(), *self._subs.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(err)
        self._pubs.clear()
        self._subs.clear()

    # -- using it ----------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry: int | None = None,
        user: list[tuple[str, str]] | None = None,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        utf8: bool = True,
    ) -> asyncio.Future[ReasonCode]:
        """QoS 1. The future resolves with the PUBACK reason code (check
        ``is_failure``), or fails with :class:`MqttError` if the connection is lost.
        ``utf8`` sets the payload format indicator (off for a sealed, binary payload)."""
        fut: asyncio.Future[ReasonCode] = self._future()
        if self.closed.done():
            fut.set_exception(MqttError("not connected"))
            return fut
        props = _properties(
            PacketTypes.PUBLISH,
            MessageExpiryInterval=expiry,
            ResponseTopic=response_topic,
            CorrelationData=correlation,
            PayloadFormatIndicator=1 if utf8 else None,
        )
        if user:
            props.UserProperty = user
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(MqttError(f"publish failed: {paho.error_string(info.rc)}"))
            return fut
        self._pubs[info.mid] = fut
        if self._attached:
            # Onto the socket now, as paho does when it runs its own loop: waiting for
            # the loop's next "writable" would put an SOS behind every callback the
            # loop has queued meanwhile. What the socket does not take now is written
            # when it becomes writable (paho keeps the writer registered).
            self._client.loop_write()
        return fut

    async def subscribe(self, topic: str) -> ReasonCode:
        """QoS 1, retain-as-published: a retained message keeps its retain flag even when
        it arrives live, so a receiver can treat it as the replay it would become."""
        fut: asyncio.Future[list[ReasonCode]] = self._future()
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        rc, mid = self._client.subscribe(topic, options=opts)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe failed: {paho.error_string(rc)}")
        self._subs[mid] = fut
        return (await fut)[0]

    def ack(self, message: Inbound) -> None:
        if message.qos > 0 and not self.closed.done():
            self._client.ack(message.mid, message.qos)

    async def disconnect(self) -> None:
        """A clean goodbye (the broker then does not publish the will)."""
        if not self.closed.done():
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(self.closed)
        self.close()

    def close(self, why: str = "closed") -> None:
        """Drop the connection now (no goodbye: the broker publishes the will)."""
        if self._misc is not None:
            self._misc.cancel()
        sock = self._sock
        if sock is not None:
            if self._attached:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
                    self._loop.remove_writer(sock.fileno())
            self._attached = False
            with contextlib.suppress(OSError):
                sock.close()
            self._sock = None
        self._finish(why)


__all__ = [
    "BrokerConfig",
    "Connack",
    "ConnectRefused",
    "Connection",
    "Inbound",
    "MqttError",
    "TlsConfig",
    "Will",
]
