"""What the daemon needs from the hardware, and how a backend supplies it.

A backend is a function that builds :class:`Parts` from the configuration: ``hw`` (the
real drivers, ``hw/parts.py``) or ``sim`` (the simulator, ``sim/parts.py``). They are
found through the ``sosbeacon.backends`` entry points declared in ``pyproject.toml``, the
way gpiozero finds its pin factories, so ``device/`` never imports ``hw/`` or ``sim/`` and
the choice is made in one place: the backend's name given to ``sosd``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from device.actuators import GpsPower, Indicator, NetworkLink
from device.battery import BatterySource
from device.button import ButtonSource
from device.clock import Clock
from device.gps import GpsSource

if TYPE_CHECKING:
    from device.config import Config

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


def load_backend(name: str) -> Backend:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise LookupError(
            f"no sosbeacon backend {name!r} (installed: {known}). Reinstall the package "
            "(pip install -e .) so its entry points are registered."
        )
    backend: Backend = found[name].load()
    return backend
