"""Texts through ModemManager's D-Bus API (``dbus-fast``): the daemon's
:class:`device.actuators.SmsLink` where ModemManager owns the modem, as it does on
Raspberry Pi OS with NetworkManager (mobile broadband). sosd then never opens the AT
port, which ModemManager holds.

What it uses of ModemManager 1.x (``org.freedesktop.ModemManager1``):

* the ObjectManager at ``/org/freedesktop/ModemManager1``: the modems, the one named by
  its IMEI (``EquipmentIdentifier``) or the first with the Messaging interface;
  ``InterfacesRemoved`` when it goes away (unplugged, reset), and the service's own
  coming and going (``NameOwnerChanged``); it is then looked for again;
* ``Modem``: ``State``, ``UnlockRequired`` and ``Sim`` (``Sim.SendPin`` with the PIN
  from ``modem.pin_file``), ``Enable(true)`` when disabled, ``SignalQuality``;
* ``Modem.Modem3gpp.RegistrationState`` (numbered as TS 27.007's ``<stat>``);
* ``Modem.Messaging``: ``Create({number, text})`` then ``Sms.Send()`` (ModemManager
  encodes the text and splits a long one into parts), ``Delete`` once sent or read;
  ``Added(path, received)`` for a text that arrives, read once its ``State`` is
  ``received`` (a long text may still be arriving in parts).

ModemManager's errors (``org.freedesktop.ModemManager1.Error.*``) are raised as
:class:`MmError`, an ``OSError`` whose message names the error and what ModemManager
said.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from sosbeacon.device.actuators import Incoming
from sosbeacon.hw.modem.driver import registered

log = logging.getLogger(__name__)

MM = "org.freedesktop.ModemManager1"
MM_PATH = "/org/freedesktop/ModemManager1"
MODEM = f"{MM}.Modem"
MESSAGING = f"{MODEM}.Messaging"
GPP = f"{MODEM}.Modem3gpp"
SMS = f"{MM}.Sms"
SIM = f"{MM}.Sim"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
BUS = "org.freedesktop.DBus"


class ModemState(enum.IntEnum):
    """``MMModemState``."""

    FAILED = -1
    UNKNOWN = 0
    INITIALIZING = 1
    LOCKED = 2
    DISABLED = 3
    DISABLING = 4
    ENABLING = 5
    ENABLED = 6
    SEARCHING = 7
    REGISTERED = 8
    DISCONNECTING = 9
    CONNECTING = 10
    CONNECTED = 11


class SmsState(enum.IntEnum):
    """``MMSmsState``."""

    UNKNOWN = 0
    STORED = 1
    RECEIVING = 2
    RECEIVED = 3
    SENDING = 4
    SENT = 5


#: ``MMModemLock``: the SIM wants its PIN
LOCK_SIM_PIN = 2


class MmError(OSError):
    """A D-Bus error from ModemManager (or the bus): its name and its message."""

    def __init__(self, name: str, text: str) -> None:
        short = name.removeprefix(f"{MM}.Error.")
        super().__init__(f"ModemManager: {short}: {text}" if text else f"ModemManager: {short}")
        self.name = name


class MmSms:
    def __init__(
        self,
        *,
        bus_address: str = "",
        imei: str = "",
        pin: str = "",
        retry: float = 5.0,
        wait_open: float = 30.0,
        poll: float = 1.0,
    ) -> None:
        self.bus_address = bus_address
        self.imei = imei
        self._pin = pin
        self.retry = retry
        self.wait_open = wait_open
        #: seconds between looks at a text still arriving in parts
        self.poll = poll
        self._bus: MessageBus | None = None
        self._modem = ""
        self._open = asyncio.Event()
        self._gone = asyncio.Event()
        self._received: asyncio.Queue[Incoming] = asyncio.Queue()
        self._jobs: set[asyncio.Task[None]] = set()
        self._heard: dict[str, Any] = {}

    @property
    def where(self) -> str:
        """What status shows as the modem's "port": ModemManager's path for it."""
        return self._modem or "ModemManager"

    # -- keeping the modem ---------------------------------------------------------------

    async def run(self) -> None:
        """Find the modem through ModemManager and follow it (a backend's background
        task); look for it again whenever it, ModemManager or the bus goes away."""
        said = ""
        while True:
            self._gone.clear()
            bus: MessageBus | None = None
            try:
                bus = await self._connect()
                self._bus = bus
                self._modem = await self._find()
                await self._ready()
                said = ""
                log.info("the modem %s is ready for SMS (through ModemManager)", self._modem)
                self._open.set()
                for path in await self._call(self._modem, MESSAGING, "List", reply="ao"):
                    self._take(path)  # texts that came while nobody listened
                disconnected = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
                gone = asyncio.ensure_future(self._gone.wait())
                await asyncio.wait({disconnected, gone}, return_when=asyncio.FIRST_COMPLETED)
                for f in (disconnected, gone):
                    f.cancel()
                log.warning("the modem %s went away; looking for it again", self._modem)
            except (OSError, EOFError) as exc:
                if str(exc) != said:
                    log.warning("SMS through ModemManager: %s; trying again", exc)
                said = str(exc)
            finally:
                self._open.clear()
                self._bus, self._modem, self._heard = None, "", {}
                if bus is not None:
                    bus.disconnect()
            await asyncio.sleep(self.retry)

    async def _connect(self) -> MessageBus:
        try:
            if self.bus_address:
                bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            await bus.connect()
        except (OSError, ValueError) as exc:
            raise MmError(f"{BUS}.Error.NoServer", f"cannot reach the D-Bus bus: {exc}") from None
        bus.add_message_handler(self._signal)
        for rule in (
            f"type='signal',sender='{MM}',interface='{MESSAGING}',member='Added'",
            f"type='signal',sender='{MM}',interface='{OBJECT_MANAGER}',member='InterfacesRemoved'",
            f"type='signal',sender='{BUS}',member='NameOwnerChanged',arg0='{MM}'",
        ):
            await self._call("/org/freedesktop/DBus", BUS, "AddMatch", "s", [rule], bus=bus, to=BUS)
        return bus

    async def _find(self) -> str:
        objects = await self._call(
            MM_PATH, OBJECT_MANAGER, "GetManagedObjects", reply="a{oa{sa{sv}}}"
        )
        modems = []
        for path, ifaces in sorted(objects.items()):
            if MODEM not in ifaces:
                continue
            imei = _value(ifaces[MODEM].get("EquipmentIdentifier"))
            modems.append((path, imei, MESSAGING in ifaces))
        if not modems:
            raise MmError(f"{MM}.Error.Core.NotFound", "no modem (is it plugged in?)")
        chosen = [m for m in modems if not self.imei or m[1] == self.imei]
        if not chosen:
            found = ", ".join(str(m[1]) for m in modems)
            raise MmError(
                f"{MM}.Error.Core.NotFound", f"no modem with IMEI {self.imei} (found: {found})"
            )
        path, _, messaging = chosen[0]
        if not messaging:
            state = ModemState(await self._get(path, MODEM, "State"))
            if state is not ModemState.LOCKED:
                raise MmError(
                    f"{MM}.Error.Core.Unsupported",
                    f"{path} cannot send SMS (no Messaging interface)",
                )
        return str(path)

    async def _ready(self) -> None:
        """Unlock the SIM with the PIN if it asks for one, and enable the modem."""
        path = self._modem
        state = ModemState(await self._get(path, MODEM, "State"))
        if state is ModemState.LOCKED:
            lock = await self._get(path, MODEM, "UnlockRequired")
            if lock != LOCK_SIM_PIN:
                raise MmError(
                    f"{MM}.Error.Core.WrongState",
                    f"the SIM is locked (MMModemLock {lock}): unlock it with mmcli",
                )
            if not self._pin:
                raise MmError(
                    f"{MM}.Error.Core.WrongState", "the SIM asks for its PIN: set modem.pin_file"
                )
            sim = await self._get(path, MODEM, "Sim")
            await self._call(sim, SIM, "SendPin", "s", [self._pin])  # never logged
            state = ModemState(await self._get(path, MODEM, "State"))
        if state in (ModemState.DISABLED, ModemState.DISABLING):
            await self._call(path, MODEM, "Enable", "b", [True])
        elif state in (ModemState.FAILED, ModemState.LOCKED):
            raise MmError(f"{MM}.Error.Core.WrongState", f"the modem is {state.name.lower()}")

    def _signal(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.interface == MESSAGING and msg.member == "Added" and msg.path == self._modem:
            path, received = msg.body
            if received:
                self._take(path)
        elif msg.member == "InterfacesRemoved" and msg.body and msg.body[0] == self._modem:
            self._gone.set()
        elif msg.member == "NameOwnerChanged" and msg.body[0] == MM and not msg.body[2]:
            self._gone.set()  # ModemManager stopped (or restarts)

    # -- texts ---------------------------------------------------------------------------

    async def send(self, number: str, text: str) -> None:
        try:
            await asyncio.wait_for(self._open.wait(), self.wait_open)
        except TimeoutError:
            raise MmError(f"{MM}.Error.Core.NotFound", "no modem is ready") from None
        modem = self._modem
        props = {"number": Variant("s", number), "text": Variant("s", text)}
        sms = await self._call(modem, MESSAGING, "Create", "a{sv}", [props], reply="o")
        try:
            await self._call(sms, SMS, "Send")
        finally:
            with contextlib.suppress(OSError):
                await self._call(modem, MESSAGING, "Delete", "o", [sms])

    def _take(self, path: str) -> None:
        job = asyncio.ensure_future(self._read(path))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _read(self, path: str) -> None:
        """A text that arrived: handed out once whole, then deleted from the modem."""
        modem = self._modem
        try:
            for _ in range(600):
                props = await self._call(path, PROPERTIES, "GetAll", "s", [SMS], reply="a{sv}")
                state = _value(props.get("State"))
                if state != SmsState.RECEIVING:
                    break
                await asyncio.sleep(self.poll)  # a long text, its parts still arriving
            if state != SmsState.RECEIVED:
                return  # one we sent, or stored: not ours to read
            number, text = _value(props.get("Number")), _value(props.get("Text"))
            await self._received.put(Incoming(str(number or ""), str(text or "")))
            await self._call(modem, MESSAGING, "Delete", "o", [path])
        except OSError as exc:
            log.warning("a text that arrived could not be read through ModemManager: %s", exc)

    async def incoming(self) -> AsyncIterator[Incoming]:
        while True:
            yield await self._received.get()

    # -- status --------------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        if not self._open.is_set():
            return self.known()
        try:
            async with asyncio.timeout(2):
                reg = registered(int(await self._get(self._modem, GPP, "RegistrationState")))
                quality, _recent = await self._get(self._modem, MODEM, "SignalQuality")
        except (OSError, TimeoutError) as exc:
            return {"ready": True, "port": self.where, "error": str(exc) or "no answer"}
        self._heard = {
            "registered": reg.name.lower(), "on_network": reg.on_network,
            "signal_pct": int(quality),
        }  # fmt: skip
        return self.known()

    def known(self) -> dict[str, Any]:
        if not self._open.is_set():
            return {"ready": False, "port": self.where}
        return {"ready": True, "port": self.where, **self._heard}

    # -- D-Bus ---------------------------------------------------------------------------

    async def _get(self, path: str, iface: str, prop: str) -> Any:
        return _value(await self._call(path, PROPERTIES, "Get", "ss", [iface, prop], reply="v"))

    async def _call(
        self, path: str, iface: str, member: str, signature: str = "",
        body: list[Any] | None = None, *, reply: str = "", bus: MessageBus | None = None,
        to: str = MM,
    ) -> Any:  # fmt: skip
        bus = bus or self._bus
        if bus is None:
            raise MmError(f"{BUS}.Error.Disconnected", "not connected to the bus")
        msg = Message(
            destination=to, path=path, interface=iface, member=member, signature=signature,
            body=body or [],
        )  # fmt: skip
        answer = await bus.call(msg)
        if answer is None:
            raise MmError(f"{BUS}.Error.NoReply", f"no answer to {member}")
        if answer.message_type is MessageType.ERROR:
            text = answer.body[0] if answer.body and isinstance(answer.body[0], str) else ""
            raise MmError(str(answer.error_name), text)
        if reply and answer.signature != reply:
            raise MmError(
                f"{BUS}.Error.InvalidSignature", f"{member} answered {answer.signature!r}"
            )
        return answer.body[0] if answer.body else None


def _value(v: Any) -> Any:
    return v.value if isinstance(v, Variant) else v


__all__ = ["MmError", "MmSms", "ModemState", "SmsState"]
