"""A microphone through ALSA: ``arecord`` from the configured capture device (a USB
microphone, an I2S HAT), as :data:`device.voice.RATE` Hz mono 16-bit PCM on a pipe.

``arecord`` rather than a binding: it is in Debian's ``alsa-utils`` on every Raspberry
Pi OS image, converts rate and format through ALSA's ``plug`` layer for devices that
cannot do 16 kHz mono themselves, and a capture that hangs is a process to kill, not a
thread stuck in C. The simulator uses this same class on an ALSA ``file`` PCM
(``sim/microphone.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
from collections.abc import Mapping

from sosbeacon.device.voice import RATE, VoiceError, last_said

#: seconds beyond the recording's own length before a silent arecord is killed
GRACE = 5.0


class AlsaMicrophone:
    def __init__(self, device: str = "default", *, env: Mapping[str, str] | None = None) -> None:
        self.device = device
        #: the environment arecord runs in (the simulator's ALSA_CONFIG_PATH)
        self.env = dict(env) if env is not None else None

    async def record(self, seconds: float) -> bytes:
        exe = shutil.which("arecord")
        if exe is None:
            raise VoiceError("arecord not found: install alsa-utils (apt-get install alsa-utils)")
        whole = max(1, math.ceil(seconds))  # arecord counts whole seconds
        proc = await asyncio.create_subprocess_exec(
            exe, "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE", "-r", str(RATE),
            "-c", "1", "-d", str(whole),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, env=self.env,
        )  # fmt: skip
        try:
            async with asyncio.timeout(whole + GRACE):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise VoiceError(
                f"the microphone {self.device!r} gave nothing for {whole + GRACE:.0f} s"
            ) from None
        if proc.returncode != 0 or not out:
            why = last_said(err, f"arecord exit {proc.returncode}")
            raise VoiceError(f"the microphone {self.device!r} cannot record: {why}")
        return out[: int(seconds * RATE) * 2]
