"""What the daemon needs from the hardware, and how a backend supplies it and declares
what it offers.

A backend is a function that builds :class:`Parts` from the configuration: ``hw`` (the
real drivers, ``hw/parts.py``) or ``sim`` (the simulator, ``sim/parts.py``). They are
found through the ``sosbeacon.backends`` entry points declared in ``pyproject.toml``, the
way gpiozero finds its pin factories, so ``device/`` never imports ``hw/`` or ``sim/`` and
the choice is made in one place: the backend's name given to ``sosd``.

An entry point names the backend's :class:`BackendInfo`: how to build its parts, its
defaults (the simulator runs with no configuration file), its configuration section, and
the controls ``sosctl`` offers for it (``sosctl sim press long``). ``device/`` names no
backend but the default, ``hw``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sosbeacon.device.actuators import (
    GpsPower,
    Indicator,
    LinkMonitor,
    Microphone,
    NetworkLink,
    SmsLink,
)
from sosbeacon.device.battery import BatterySource
from sosbeacon.device.button import ButtonSource
from sosbeacon.device.clock import Clock
from sosbeacon.device.entrypoints import declared, load
from sosbeacon.device.gps import GpsSource

if TYPE_CHECKING:
    from sosbeacon.device.config import Config

#: a backend-specific command for ``sosctl`` (the simulator's "press the button", ...)
Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Parts:
    gps: GpsSource
    button: ButtonSource | None = None
    battery: BatterySource | None = None
    indicator: Indicator | None = None
    gps_power: GpsPower | None = None
    network: NetworkLink | None = None
    #: tells when the network goes down and comes back (NetworkManager, the modem)
    link_monitor: LinkMonitor | None = None
    #: text messages when data does not get through (a cellular modem)
    sms: SmsLink | None = None
    #: voice notes (ALSA capture)
    microphone: Microphone | None = None
    #: extra ``sosctl`` commands, by name (``sim.press``, ...)
    controls: dict[str, Control] = field(default_factory=dict)
    #: what the backend needs running beside the daemon (a simulated receiver, ...)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: backend objects for in-process users (the demo and drills drive the simulator)
    handles: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    async def __call__(self, config: Config, clock: Clock, stack: AsyncExitStack) -> Parts:
        """Build the parts; register their clean-up on ``stack``."""
        ...


GROUP = "sosbeacon.backends"
#: the backend ``sosd run`` uses unless told otherwise
DEFAULT_BACKEND = "hw"


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """A backend's ``sosctl <backend> <name> VALUE`` (the request ``<backend>.<name>``)."""

    name: str
    #: what VALUE may be, for the help
    values: str


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend declares (its entry point names one of these). Cheap to import:
    what it builds is imported only when the daemon starts (:meth:`load`)."""

    name: str
    #: for ``sosd run --help``
    summary: str
    #: ``module:function`` that builds the parts (a :class:`Backend`)
    build: str
    #: the configuration used when no file is given (dotted keys), so the backend runs
    #: anywhere (the simulator); None: a configuration file is needed
    defaults: Callable[[], dict[str, Any]] | None = None
    #: its own configuration section (``[<name>]``): a dataclass of keys with defaults
    section: type | None = None
    #: what ``sosctl <name> ...`` offers (the parts' ``controls`` answer them)
    controls: tuple[ControlSpec, ...] = ()

    def load(self) -> Backend:
        built: Backend = load(self.build)
        return built


@functools.cache
def backends() -> dict[str, BackendInfo]:
    """The installed backends' declarations, by name (scanned once: each scan of the
    installed distributions costs milliseconds, and sosd's start asks three times)."""
    out: dict[str, BackendInfo] = {}
    for name, value in declared(GROUP).items():
        info = load(value)
        if isinstance(info, BackendInfo):
            out[name] = info
    return out


def backend_info(name: str) -> BackendInfo:
    found = backends()
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise LookupError(
            f"no sosbeacon backend {name!r} (installed: {known}). Reinstall the package "
            "(pip install -e .) so its entry points are registered."
        )
    return found[name]


def load_backend(name: str) -> Backend:
    return backend_info(name).load()
