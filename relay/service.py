"""The running relay: one asyncio loop, one TaskGroup.

* **ingest**: a persistent MQTT v5 session (clean start off) with a shared subscription
  ``$share/<group>/<prefix>/+/#`` at QoS 1, and a plain one on ``<prefix>/+/sos`` for the
  retained SOS state (a broker sends no retained message to a shared subscription).
  A message is acknowledged (PUBACK) only after its records are committed, so a relay
  that dies in between gets it again; a database error drops the connection and the
  broker redelivers.
* **notifier**: sends what :class:`relay.store.Store` says is due, with retries.
* **sweeper**: deletes sessions whose 72 hours are over.
* **receipts**: what reached whom, back to each device (retained, debounced).
* **web**: the contacts' page (:mod:`relay.web`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apprise
import sqlalchemy.exc

from sosbeacon.device.mqtt import Connection, Inbound, MqttError
from sosbeacon.device.wire import (
    Address,
    AddressError,
    Received,
    SealError,
    decode_sos,
    decode_track,
    dumps,
)
from sosbeacon.relay import notify
from sosbeacon.relay.config import RelayConfig
from sosbeacon.relay.keys import DeviceKeys
from sosbeacon.relay.notify import AttachMemory
from sosbeacon.relay.store import META_ONLY, Ingested, Store

log = logging.getLogger("sos-relay")
#: notifications being sent at once, at most (each contact's alert is one)
_SENDING_MAX = 50
#: messages stored in one transaction at most, when they wait together (a backlog)
BATCH = 16
#: errors that say the database is away, not that a message is bad: retried (the
#: connection is dropped and the broker redelivers)
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError)


@dataclass
class Counters:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    undecodable: int = 0
    refused_tokens: int = 0
    db_errors: int = 0
    #: messages dropped because the database refused them for what they hold
    unstorable: int = 0
    #: with end-to-end keys: messages in the clear, under an unknown key, or tampered
    #: with (never stored, never shown)
    unsealed: int = 0


@dataclass(eq=False)
class Viewer:
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    #: too slow to take its updates: its stream ends, the browser reconnects and reloads
    dropped: bool = False


class Hub:
    """Live pages waiting for news of a session. One update is encoded once and handed
    to every viewer's queue."""

    def __init__(self) -> None:
        self._viewers: dict[int, set[Viewer]] = defaultdict(set)

    def join(self, sid: int) -> Viewer:
        v = Viewer()
        self._viewers[sid].add(v)
        return v

    def leave(self, sid: int, v: Viewer) -> None:
        viewers = self._viewers.get(sid)
        if viewers is not None:
            viewers.discard(v)
            if not viewers:
                del self._viewers[sid]

    def watched(self, sid: int) -> bool:
        return bool(self._viewers.get(sid))

    def publish(self, sid: int, event: bytes) -> None:
        for v in list(self._viewers.get(sid, ())):
            try:
                v.queue.put_nowait(event)
            except asyncio.QueueFull:
                v.dropped = True
                self.leave(sid, v)

    def sessions(self) -> list[int]:
        """The sessions some page is watching."""
        return list(self._viewers)

    def viewers(self) -> int:
        return sum(len(v) for v in self._viewers.values())


def sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class Relay:
    config: RelayConfig
    store: Store
    clock: Callable[[], float] = time.time
    hub: Hub = field(default_factory=Hub)
    counters: Counters = field(default_factory=Counters)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _conn: Connection | None = None
    _wake_notifier: asyncio.Event = field(default_factory=asyncio.Event)
    _dirty: set[str] = field(default_factory=set)
    _dirty_event: asyncio.Event = field(default_factory=asyncio.Event)
    _urgent: asyncio.Event = field(default_factory=asyncio.Event)
    #: called as ``observer(what, details)`` when something a contact sees happens:
    #: ``sos-stored``, ``notified``, ``opened``, ``ack-sent``, ``ack-confirmed`` (the
    #: drills and the benchmarks time them; an observer must not block)
    observers: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    #: the devices' end-to-end keys (relay.keys_dir), or None: payloads in the clear
    keys: DeviceKeys | None = None

    def __post_init__(self) -> None:
        if self.keys is None and self.config.relay.keys_dir:
            self.keys = DeviceKeys(Path(self.config.relay.keys_dir))

    def tell(self, what: str, **details: Any) -> None:
        for observe in self.observers:
            try:
                observe(what, details)
            except Exception:
                log.exception("relay: an observer of %s failed", what)

    @property
    def _me(self) -> str:
        """This relay's name on its notification claims: its MQTT client id, which is
        its own (the broker's session is by it), so a restart knows its old claims."""
        return self.config.mqtt.client_id

    @property
    def prefix(self) -> str:
        return self.config.mqtt.prefix.rstrip("/")

    async def run(self, *, web: bool = True) -> None:
        await self.store.create()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._mqtt())
            tg.create_task(self._mqtt(sos_only=True))
            tg.create_task(self._notifier())
            tg.create_task(self._sweeper())
            tg.create_task(self._receipts())
            if self.store.shared:
                tg.create_task(self._others())
            if web:
                from sosbeacon.relay.web import serve

                tg.create_task(serve(self))

    # -- MQTT ----------------------------------------------------------------------------

    async def _mqtt(self, *, sos_only: bool = False) -> None:
        """One connection to the broker, its messages stored in batches and acknowledged
        only then. The main one has the shared subscription to everything; a second one
        (``sos_only``, client id ``<client_id>-sos``) has ``<prefix>/+/sos`` unshared: an
        SOS event has a queue of its own at the broker, so after a pause it does not wait
        behind a routine backlog, and every relay gets every SOS, retained ones included
        (a broker gives no retained message to a shared subscription). The ledger drops
        what comes twice."""
        delay = 0.5
        broker = self.config.broker_config()
        if sos_only:
            broker = dataclasses.replace(broker, client_id=f"{broker.client_id}-sos")
            topics = [f"{self.prefix}/+/sos"]
        else:
            topics = [f"$share/{self.config.mqtt.group}/{self.prefix}/+/#"]
        while True:
            conn = Connection(broker)
            try:
                ack = await conn.connect(clean_start=False)
                for topic in topics:
                    rc = await conn.subscribe(topic)
                    if rc.is_failure:
                        raise MqttError(f"subscription to {topic} refused: {rc}")
                if not sos_only:
                    self._conn = conn
                    self.connected.set()
                    self._dirty_event.set()  # receipts that could not go out
                log.info(
                    "relay: connected to %s%s (session %s)",
                    self.config.mqtt.broker.rsplit("@", 1)[-1], " for SOS events" * sos_only,
                    "resumed" if ack.session_present else "new",
                )  # fmt: skip
                delay = 0.5
                while True:
                    batch = [await _next(conn)]
                    while len(batch) < BATCH and not conn.messages.empty():
                        batch.append(conn.messages.get_nowait())
                    if not await self._take(batch):
                        raise MqttError("database unavailable: the broker will redeliver")
                    for m in batch:  # in the order they came (MQTT wants PUBACKs so)
                        conn.ack(m)
            except MqttError as exc:
                log.warning("relay: %s; reconnecting in %.1f s", exc, delay)
            finally:
                if not sos_only:
                    self.connected.clear()
                    self._conn = None
                conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _take(self, batch: list[Inbound]) -> bool:
        """Handle messages that arrived together, their records stored in one
        transaction; False when they could not be stored (none is acknowledged)."""
        items: list[tuple[str, list[Received]]] = []
        for m in batch:
            self.counters.messages += 1
            parts = m.topic.split("/")
            if len(parts) != 3 and not (len(parts) > 3 and parts[2] == "reply"):
                continue
            if parts[0] != self.prefix:
                continue
            device, leaf = parts[1], parts[2]
            if leaf not in ("track", "sos", "voice", "reply"):
                continue  # the relay's own receipts and commands
            payload = self._open(device, m)
            if payload is None:
                continue
            m = dataclasses.replace(m, payload=payload)
            try:
                if leaf == "track":
                    items.append((device, decode_track(m.payload)))
                elif leaf in ("sos", "voice") and m.payload:
                    items.append((device, [decode_sos(m.payload)]))
                elif leaf == "reply" and m.payload:
                    await self._reply(m.payload)
            except Exception as exc:  # the decoders are pure: whatever they raise, it is the input
                self.counters.undecodable += 1
                log.warning("relay: undecodable message on %s: %s", m.topic, str(exc)[:200])
        if not items:
            return True
        try:
            await self._store(items)
        except TRANSIENT:
            self.counters.db_errors += 1
            log.exception("relay: storing %d message(s) failed", len(items))
            return False
        except Exception:
            # something in one message the database will never take (a bug, or a
            # malformed record that decoded): store the others one by one, and count and
            # drop the one, rather than have it redelivered for ever
            for item in items:
                try:
                    await self._store([item])
                except TRANSIENT:
                    self.counters.db_errors += 1
                    log.exception("relay: storing a message from %s failed", item[0])
                    return False
                except Exception:
                    self.counters.unstorable += 1
                    log.exception("relay: a message from %s cannot be stored: dropped", item[0])
        return True

    def _open(self, device: str, m: Inbound) -> bytes | None:
        """``m``'s payload, opened under the device's key when the relay has keys; None
        (counted, logged without content) when it must not be believed."""
        if self.keys is None or not m.payload:
            return m.payload  # no encryption; or an empty retained payload (a clear)
        try:
            return self.keys.open(device, m.payload)
        except SealError as exc:
            self.counters.unsealed += 1
            log.warning(
                "relay: refused a message on %s: %s (%d so far)", m.topic, exc,
                self.counters.unsealed,
            )  # fmt: skip
            return None

    def _seal(self, device: str, payload: bytes) -> bytes:
        return payload if self.keys is None else self.keys.seal(device, payload)

    async def _store(self, items: list[tuple[str, list[Received]]]) -> None:
        done = await self.store.ingest_many(items, now=self.clock())
        self.counters.records += sum(len(got) for _, got in items)
        self.counters.duplicates += done.duplicates
        await self._after(done)

    async def _after(self, done: Ingested) -> None:
        if done.started or done.ended or done.voices:
            self._wake_notifier.set()
        for sid, clip in done.voices:
            self.tell("voice-stored", session_id=sid, clip=clip)
            if self.hub.watched(sid):
                await self.push(sid, since=META_ONLY)
        for sid in done.started:
            self.tell("sos-stored", session_id=sid)
        for sid, recs in done.new.items():
            if not self.hub.watched(sid):
                continue
            light = done.live_update(sid)  # route points only: no query
            if light is not None:
                self.hub.publish(sid, sse("update", light))
            else:
                await self.push(sid, since=min(r.seq for r in recs) - 1)
        for device in done.devices:
            # a new SOS stored is told at once (the device stops saying "not yet
            # received"); anything else waits a moment to share one receipt
            self.mark(device, urgent=bool(done.started))

    async def _others(self) -> None:
        """Several relays on one PostgreSQL: what the others stored reaches the pages
        this one serves (``LISTEN``/``NOTIFY``, docs/relay.md). After every (re)start of
        listening, each watched page is refreshed whole: what was announced while this
        relay was not listening is not lost to its viewers."""
        changed: dict[int, int] = {}
        wake = asyncio.Event()

        def heard(sid: int, since: int) -> None:
            if self.hub.watched(sid):
                changed[sid] = min(since, changed.get(sid, since))
                wake.set()

        delay = 1.0

        def ready() -> None:
            nonlocal delay
            delay = 1.0
            for sid in self.hub.sessions():
                changed[sid] = 0
            wake.set()
            log.info("relay: listening for the other relays' changes")

        async def pushing() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while changed:
                    sid, since = changed.popitem()
                    try:
                        await self.push(sid, since=since)
                    except TRANSIENT as exc:
                        log.warning("relay: a page update failed (%s); its viewers reconnect", exc)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pushing())
            while True:
                try:
                    await self.store.listen(heard, ready)
                except (ConnectionError, *TRANSIENT) as exc:
                    log.warning("relay: not hearing the other relays (%s); again in %.0f s",
                                exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def push(self, sid: int, *, since: int) -> None:
        """Tell the session's live pages what changed."""
        page = await self.store.page(sid, since_seq=since)
        self.hub.publish(sid, sse("update", page))

    async def _reply(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            cmd_id = msg.get("id") if isinstance(msg, dict) else None
        except ValueError:
            return
        if not isinstance(cmd_id, str) or not cmd_id.startswith("relay-"):
            return
        sid = await self.store.ack_answered(
            cmd_id, ok=msg.get("ok") is True, error=str(msg.get("error") or "")[:200],
            now=self.clock(),
        )  # fmt: skip
        if sid:
            self.tell("ack-confirmed", session_id=sid, ok=msg.get("ok") is True)
            await self.push(sid, since=META_ONLY)
            await self.store.announce({sid: META_ONLY})  # a page on another relay too
            key = await self.store.session_key(sid)
            if key:
                self.mark(key[0])

    async def send_ack(self, link_id: int, sid: int, name: str) -> str:
        """The page's "I'm on it": an ``ack`` command to the device, for this session."""
        key = await self.store.session_key(sid)
        conn = self._conn
        if key is None or conn is None:
            raise MqttError("the relay is not connected to the broker right now")
        device, sess = key
        cmd_id = f"relay-{secrets.token_hex(8)}"
        await self.store.ack_requested(link_id, cmd_id, now=self.clock())
        payload = dumps({"cmd": "ack", "id": cmd_id, "by": name[:64], "session": sess})
        try:
            payload = self._seal(device, payload)
        except SealError as exc:
            raise MqttError(f"the command cannot be sealed: {exc}") from None
        rc = await conn.publish(
            f"{self.prefix}/{device}/cmd", payload,
            response_topic=f"{self.prefix}/{device}/reply/{self.config.mqtt.client_id}",
            utf8=self.keys is None,
        )  # fmt: skip
        if rc.is_failure:
            raise MqttError(f"the broker refused the command: {rc}")
        self.tell("ack-sent", session_id=sid, name=name)
        return cmd_id

    # -- notifications -----------------------------------------------------------------

    async def _notifier(self) -> None:
        n = self.config.notify
        back = await self._guarded(self.store.take_back(self._me, now=self.clock()))
        if back:
            log.warning(
                "relay: %d notification(s) were being sent when this relay stopped: "
                "sending them again (a contact may get one twice)", back,
            )  # fmt: skip
        # Each send is a task of its own, and the next due are claimed while others are
        # still sending: one slow service (a send may take up to notify.timeout) never
        # holds up the alert of an SOS that arrives meanwhile.
        sending: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            sending.discard(task)
            self._wake_notifier.set()  # room for more
            if not task.cancelled() and task.exception() is not None:
                log.error("relay: sending a notification failed", exc_info=task.exception())

        try:
            while True:
                # cleared before looking, so that a start stored while sending is not missed
                self._wake_notifier.clear()
                room = _SENDING_MAX - len(sending)
                due = None
                if room > 0:
                    due = await self._guarded(
                        self.store.claim_due(
                            now=self.clock(), me=self._me, lease=n.timeout * 2 + 30, limit=room
                        )
                    )
                for item in due or []:
                    task = asyncio.create_task(self._send_one(item))
                    sending.add(task)
                    task.add_done_callback(done)
                if due and len(due) == room:
                    continue  # more may be due
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake_notifier.wait()
        finally:
            for task in sending:
                task.cancel()  # their claims are taken back at the next start
            await asyncio.gather(*sending, return_exceptions=True)

    async def _send_one(self, item: dict[str, Any]) -> None:
        cfg, now = self.config, self.clock()
        who = item["owner"] or item["device"]
        link = cfg.link_base() + self.store.link_token(item["salt"])
        if item["kind"] == "start" and item["acked"] is not None:
            msg = notify.acknowledged_message(
                who=who, drill=bool(item["drill"]), link=link, acked=item["acked"]
            )
        elif item["kind"] == "start":
            msg = notify.start_message(
                who=who, drill=bool(item["drill"]), start=item["start"] or {}, link=link,
                now=now, sent=item["started"] or now,
            )  # fmt: skip
        elif item["kind"] == "voice":
            note = await self.store.voice(item["sid"])
            if note is None:  # the session went meanwhile
                await self.store.failed(item["id"], "the voice note is gone", retry_at=None)
                return
            clip, mime, data, seconds = note
            msg = notify.voice_message(
                who=who, drill=bool(item["drill"]), link=link, seconds=seconds,
                attachment=(f"voice-note-{clip}.opus", mime, data),
            )  # fmt: skip
        else:
            msg = notify.end_message(
                who=who, drill=bool(item["drill"]), link=link, expires=item["expires"]
            )
        error: str | None = None
        try:
            address = Address(item["channel"], item["address"])
            error = await self._deliver(notify.service_url(cfg.notify.services, address), msg)
        except AddressError as exc:
            await self.store.failed(item["id"], str(exc), retry_at=None)
            log.warning("relay: cannot notify %s: %s", item["name"], exc)
            self.mark(item["device"])
            return
        if error is None:
            await self.store.sent(item["id"], now=self.clock())
            log.info("relay: %s notified (%s, %s)", item["name"], item["channel"], item["kind"])
            self.tell("notified", name=item["name"], channel=item["channel"], kind=item["kind"])
        else:
            attempts = item["attempts"] + 1
            retry = None
            if attempts < cfg.notify.attempts:
                retry = self.clock() + min(
                    cfg.notify.retry_max, cfg.notify.retry_min * 2 ** (attempts - 1)
                )
            await self.store.failed(item["id"], error, retry_at=retry)
            log.warning(
                "relay: notifying %s by %s failed (attempt %d): %s%s", item["name"],
                item["channel"], attempts, error,
                f"; again in {retry - self.clock():.0f} s" if retry else "; giving up",
            )  # fmt: skip
        self.mark(item["device"])

    async def _deliver(self, url: str, msg: notify.Message) -> str | None:
        """Send one message; ``None`` when it went, else why not."""
        a = apprise.Apprise()
        if not a.add(url):
            return "Apprise does not understand this service URL (check notify.services)"
        attach = None
        if msg.attachment is not None:  # sent where the channel takes attachments (e-mail)
            name, mime, data = msg.attachment
            memory = AttachMemory(content=data, name=name, mimetype=mime)  # type: ignore[no-untyped-call]
            attach = apprise.AppriseAttachment(memory)
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as said:  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self.config.notify.timeout):
                    result = await a.async_notify(
                        body=msg.body, title=msg.title, body_format=apprise.NotifyFormat.TEXT,
                        attach=attach,
                    )  # fmt: skip
            except TimeoutError:
                return f"no answer within {self.config.notify.timeout:g} s"
        if result:
            return None
        lines = [ln.strip() for ln in str(said.getvalue()).splitlines() if ln.strip()]
        return (lines[-1] if lines else "the service refused it")[:300]

    # -- receipts, expiry --------------------------------------------------------------

    def mark(self, device: str, *, urgent: bool = False) -> None:
        self._dirty.add(device)
        if urgent:
            self._urgent.set()
        self._dirty_event.set()

    async def _receipts(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            # gather a burst into one receipt, unless something is urgent (now or while
            # gathering)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._urgent.wait()
            self._urgent.clear()
            conn = self._conn
            if conn is None:
                continue
            devices, self._dirty = self._dirty, set()
            for device in sorted(devices):
                base = self.config.link_base()
                r = await self._guarded(self.store.receipt(device, link_base=base))
                if r is None:
                    self._dirty.add(device)
                    continue
                r["t"] = round(self.clock(), 3)
                expiry = None
                if r.get("exp"):
                    expiry = max(1, int(r["exp"] - self.clock()))
                try:
                    await conn.publish(
                        f"{self.prefix}/{device}/receipt", self._seal(device, dumps(r)),
                        retain=True, expiry=expiry, utf8=self.keys is None,
                    )  # fmt: skip
                except MqttError:
                    self._dirty.add(device)
                except SealError as exc:  # no key for it: it gets no receipt
                    log.warning("relay: no receipt for %s: %s", device[:64], exc)

    async def _sweeper(self) -> None:
        while True:
            gone = await self._guarded(self.sweep_now())
            if gone:
                log.info("relay: %d expired session(s) deleted", gone)
            await asyncio.sleep(self.config.relay.sweep_interval)

    async def sweep_now(self) -> int:
        """Delete the sessions whose route has expired (the sweeper does it every
        ``relay.sweep_interval``); how many went."""
        return await self.store.sweep(
            now=self.clock(), gone_for=self.config.relay.gone_days * 86400
        )

    async def _guarded(self, aw: Any) -> Any:
        """A store call from a background loop: an error is logged, not fatal."""
        try:
            return await aw
        except Exception:
            self.counters.db_errors += 1
            log.exception("relay: database call failed")
            await asyncio.sleep(1.0)
            return None


async def _next(conn: Connection) -> Inbound:
    get = asyncio.ensure_future(conn.messages.get())
    either: set[asyncio.Future[Any]] = {get, conn.closed}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        get.cancel()
        raise
    if not get.done():
        get.cancel()
        raise MqttError(conn.closed.result())
    return get.result()
