"""A fake ModemManager on a private D-Bus bus, for the tests of
:mod:`hw.modem.mm`: the real client talks to it exactly as it would to ModemManager
1.x on the system bus.

:class:`PrivateBus` starts ``dbus-daemon`` on a socket in a temporary directory (never
the machine's buses). :class:`FakeModemManager` owns ``org.freedesktop.ModemManager1``
there and serves one modem: the ObjectManager, ``Modem`` (state, lock, SIM, signal,
IMEI, ``Enable``), ``Modem3gpp`` (registration), ``Messaging`` (``Create``, ``List``,
``Delete``, ``Added``), ``Sms`` objects (``Send``) and the ``Sim`` (``SendPin``). On
demand it refuses the next sends with a ModemManager error, receives a text (in parts:
``receiving`` first, ``received`` a moment later), loses the modem (unplugged) and
brings it back. What it "sent to the network" is kept in :attr:`FakeModemManager.sent`.

(No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures
from the annotations, ``Annotated`` with a ``DBusSignature``, at class creation.)
"""

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusInt32,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from sosbeacon.hw.modem.mm import GPP, MESSAGING, MM, MM_PATH, MODEM, SIM, SMS, ModemState, SmsState

Quality = Annotated[list[int | bool], DBusSignature("(ub)")]
Paths = Annotated[list[str], DBusSignature("ao")]
Announced = Annotated[list[str | bool], DBusSignature("ob")]

MODEM_PATH = f"{MM_PATH}/Modem/0"
SIM_PATH = f"{MM_PATH}/SIM/0"


class PrivateBus:
    """``dbus-daemon`` on its own socket, stopped afterwards."""

    def __init__(self) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise RuntimeError("dbus-daemon not found: sudo apt-get install dbus-daemon")
        self.dir = Path(tempfile.mkdtemp(prefix="sos-dbus-"))
        self.address = f"unix:path={self.dir / 'bus'}"
        self._proc = subprocess.Popen(
            [exe, "--session", "--nofork", "--nopidfile", f"--address={self.address}",
             "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self._proc.stdout is not None
        if not self._proc.stdout.readline():  # the address, once it listens
            raise RuntimeError("dbus-daemon did not start")

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrivateBus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Sent:
    to: str
    text: str


@dataclass
class FakeState:
    imei: str = "356938035643809"
    state: ModemState = ModemState.REGISTERED
    #: the PIN the SIM asks for ("" = unlocked)
    pin: str = ""
    #: TS 27.007 numbering (1 home, 3 denied, 5 roaming)
    registration: int = 1
    quality: int = 67
    #: the next sends fail with these ModemManager errors (name, message), one each
    fail_sends: list[tuple[str, str]] = field(default_factory=list)
    enabled_calls: int = 0
    pins_tried: list[str] = field(default_factory=list)


class _Sms(ServiceInterface):
    def __init__(self, owner: "FakeModemManager", number: str, text: str, state: SmsState):
        super().__init__(SMS)
        self.owner, self.number, self.text, self.state = owner, number, text, state

    @method()
    def Send(self) -> None:
        s = self.owner.state
        if s.registration not in (1, 5):
            raise DBusError(f"{MM}.Error.MessageError.NetworkTimeout", "no network service")
        if s.fail_sends:
            raise DBusError(*s.fail_sends.pop(0))
        self.owner.sent.append(Sent(self.number, self.text))
        self.state = SmsState.SENT

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusUInt32:
        return int(self.state)

    @dbus_property(access=PropertyAccess.READ)
    def Number(self) -> DBusStr:
        return self.number

    @dbus_property(access=PropertyAccess.READ)
    def Text(self) -> DBusStr:
        return self.text


class _Modem(ServiceInterface):
    def __init__(self, owner: "FakeModemManager") -> None:
        super().__init__(MODEM)
        self.owner = owner

    @method()
    def Enable(self, enable: DBusBool) -> None:
        s = self.owner.state
        s.enabled_calls += 1
        s.state = ModemState.REGISTERED if enable else ModemState.DISABLED

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusInt32:
        return int(self.owner.state.state)

    @dbus_property(access=PropertyAccess.READ)
    def UnlockRequired(self) -> DBusUInt32:
        return 2 if self.owner.state.pin else 1

    @dbus_property(access=PropertyAccess.READ)
    def Sim(self) -> DBusObjectPath:
        return SIM_PATH

    @dbus_property(access=PropertyAccess.READ)
    def EquipmentIdentifier(self) -> DBusStr:
        return self.owner.state.imei

    @dbus_property(access=PropertyAccess.READ)
    def SignalQuality(self) -> Quality:
        return [self.owner.state.quality, True]


class _Gpp(ServiceInterface):
    def __init__(self, owner: "FakeModemManager") -> None:
        super().__init__(GPP)
        self.owner = owner

    @dbus_property(access=PropertyAccess.READ)
    def RegistrationState(self) -> DBusUInt32:
        return self.owner.state.registration


class _Messaging(ServiceInterface):
    def __init__(self, owner: "FakeModemManager") -> None:
        super().__init__(MESSAGING)
        self.owner = owner

    @method()
    def Create(self, properties: DBusDict) -> DBusObjectPath:
        number, text = properties.get("number"), properties.get("text")
        if not isinstance(number, Variant) or not isinstance(text, Variant):
            raise DBusError(f"{MM}.Error.Core.InvalidArgs", "'number' and 'text' are required")
        return self.owner.add(str(number.value), str(text.value), SmsState.STORED)

    @method()
    def List(self) -> Paths:
        return list(self.owner.messages)

    @method()
    def Delete(self, path: DBusObjectPath) -> None:
        if path not in self.owner.messages:
            raise DBusError(f"{MM}.Error.Core.NotFound", f"no SMS {path}")
        self.owner.remove(path)

    @signal()
    def Added(self, path: str, received: bool) -> Announced:
        return [path, received]


class _Sim(ServiceInterface):
    def __init__(self, owner: "FakeModemManager") -> None:
        super().__init__(SIM)
        self.owner = owner

    @method()
    def SendPin(self, pin: DBusStr) -> None:
        s = self.owner.state
        s.pins_tried.append(pin)
        if pin != s.pin:
            raise DBusError(f"{MM}.Error.MobileEquipment.IncorrectPassword", "incorrect PIN")
        s.pin = ""
        s.state = ModemState.DISABLED  # unlocked: ModemManager then wants it enabled


class FakeModemManager:
    def __init__(self, bus_address: str, state: FakeState | None = None) -> None:
        self.address = bus_address
        self.state = state or FakeState()
        self.sent: list[Sent] = []
        self.messages: dict[str, _Sms] = {}
        self._n = 0
        self._bus: MessageBus | None = None
        self._modem = _Modem(self)
        self._gpp = _Gpp(self)
        self._messaging = _Messaging(self)
        self._sim = _Sim(self)

    async def start(self) -> None:
        bus = MessageBus(bus_address=self.address, bus_type=BusType.SESSION)
        await bus.connect()
        self._bus = bus
        bus.export(SIM_PATH, self._sim)
        self.plug()
        await bus.request_name(MM)

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    def plug(self) -> None:
        """The modem appears (ModemManager announces it: InterfacesAdded)."""
        assert self._bus is not None
        for iface in (self._modem, self._gpp, self._messaging):
            self._bus.export(MODEM_PATH, iface)

    def unplug(self) -> None:
        """The modem disappears (InterfacesRemoved); its messages with it."""
        assert self._bus is not None
        for path in list(self.messages):
            self.remove(path)
        self._bus.unexport(MODEM_PATH)

    def add(self, number: str, text: str, state: SmsState) -> str:
        assert self._bus is not None
        self._n += 1
        path = f"{MM_PATH}/SMS/{self._n}"
        self.messages[path] = _Sms(self, number, text, state)
        self._bus.export(path, self.messages[path])
        return path

    def remove(self, path: str) -> None:
        assert self._bus is not None
        self.messages.pop(path, None)
        self._bus.unexport(path)

    async def sms_from(self, number: str, text: str, *, parts_delay: float = 0.0) -> str:
        """A text arrives; with ``parts_delay`` it is announced while its later parts
        are still on their way (``receiving``), and complete that much later."""
        first = SmsState.RECEIVING if parts_delay else SmsState.RECEIVED
        path = self.add(number, text, first)
        self._messaging.Added(path, True)
        if parts_delay:
            await asyncio.sleep(parts_delay)
            self.messages[path].state = SmsState.RECEIVED
        return path

    async def __aenter__(self) -> "FakeModemManager":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()


__all__ = ["FakeModemManager", "FakeState", "PrivateBus", "Sent"]
