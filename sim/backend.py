"""What the simulator backend declares (the ``sim`` entry point): its ``[sim]``
configuration section, the configuration it runs with when no file is given (so ``sosd
run --sim`` works anywhere), and the controls ``sosctl sim ...`` offers. Importing this
imports nothing of the simulator itself: that waits for :func:`sim.parts.build`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sosbeacon.device.parts import BackendInfo, ControlSpec


@dataclass(frozen=True, slots=True)
class SimSettings:
    """``[sim]``: the simulated world."""

    #: the walker's speed along the sample route, metres per second
    walk_speed: float = 1.4
    #: the simulated battery's charge at start, percent
    battery_pct: float = 85.0
    #: seconds before the simulated receiver reports its first fix
    cold_start: float = 3.0


def data_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sosbeacon-sim"


def defaults() -> dict[str, Any]:
    """With no configuration file: a device that runs anywhere."""
    return {
        "device.id": "sim-beacon",
        "device.data_dir": str(data_dir()),
        "sos.contacts": [{"name": "Alice (simulated contact)", "reach": "+44 7700 900123"}],
    }


BACKEND = BackendInfo(
    name="sim",
    summary="simulate all hardware (GPS on a pty, button, battery, modem)",
    build="sosbeacon.sim.parts:build",
    defaults=defaults,
    section=SimSettings,
    controls=(
        ControlSpec("press", "long | multi | short"),
        ControlSpec("battery", "PCT, or plug | unplug"),
        ControlSpec("gps", "lost | back"),
        ControlSpec("network", "down | up (the modem's data link)"),
        ControlSpec("sms-from", "NUMBER TEXT (a text arrives from NUMBER)"),
        ControlSpec("sms-log", "- (what the simulated network carried)"),
    ),
)
