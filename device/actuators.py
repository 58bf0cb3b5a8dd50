"""What the SOS state machine asks of the rest of the device, as small Protocols.

Each has a real implementation in ``hw/`` (GPIO LED and buzzer, receiver power commands,
NetworkManager) and a simulated one in ``sim/``; all are optional in the controller.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol


class Cue(enum.StrEnum):
    """Patterns the LED and buzzer show; the hardware decides what each looks like."""

    COUNTDOWN = "countdown"  # once per countdown second
    SOS_ACTIVE = "sos-active"
    CANCELLED = "cancelled"
    ENDED = "ended"
    REFUSED = "refused"  # e.g. no emergency contact configured
    ACKNOWLEDGED = "acknowledged"
    LOW_BATTERY = "low-battery"


class Indicator(Protocol):
    async def cue(self, cue: Cue) -> None: ...


class GpsPowerMode(enum.StrEnum):
    FULL = "full"  # continuous, full update rate
    PERIODIC = "periodic"  # receiver's own duty cycle
    OFF = "off"  # backup / standby


class GpsPower(Protocol):
    async def set_mode(self, mode: GpsPowerMode) -> None: ...


class NetworkLink(Protocol):
    async def up(self) -> None:
        """Bring the uplink up (e.g. a cellular connection) if it is down."""
        ...


class Microphone(Protocol):
    async def record(self, seconds: float) -> bytes:
        """``seconds`` of sound, as :data:`device.voice.RATE` Hz mono signed 16-bit
        little-endian PCM. Raises OSError when there is no microphone, it is busy, or
        the recording failed (its message says which)."""
        ...


class LinkMonitor(Protocol):
    def changes(self) -> AsyncIterator[bool]:
        """Whether the network is up, each time that changes (the first value is the
        state now, when known); never ends on its own. The uplink reconnects the moment
        it says up, instead of waiting out its backoff."""
        ...


@dataclass(frozen=True, slots=True)
class Incoming:
    """A text message received: from which number, and what it says (whole)."""

    sender: str
    text: str


class SmsLink(Protocol):
    """Text messages through a cellular modem (``hw.modem``; the simulator's on a pty)."""

    async def send(self, number: str, text: str) -> None:
        """Send ``text`` (several messages if long). Raises OSError when it could not
        go (its message says why)."""
        ...

    def incoming(self) -> AsyncIterator[Incoming]:
        """Messages received, whole, as they come; never ends on its own."""
        ...

    async def state(self) -> dict[str, Any]:
        """What ``sosctl status`` shows of it (asked when asked: no polling)."""
        ...

    def known(self) -> dict[str, Any]:
        """What is known of it without asking (for the STATUS line of every watchdog
        tick): ready or not, and what :meth:`state` last heard."""
        ...
