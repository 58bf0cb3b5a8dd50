"""A simulated microphone on the real capture path: ALSA's ``file`` PCM plays a spoken
sentence into ``arecord``, with no sound card.

:func:`make` writes, in the simulator's own directory (never the user's ALSA
configuration):

* ``speech.raw``: a sentence spoken by ``espeak-ng`` (Debian ``espeak-ng``), made 16 kHz
  mono 16-bit, followed by silence for the rest of the recording;
* ``asound.conf``: a PCM ``sosmic`` whose ``infile`` is that file, on a ``null``
  slave (``type file`` reads its capture from ``infile``), behind ``plug``.

and returns the hardware's own :class:`hw.microphone.AlsaMicrophone` on ``sosmic``, with
``ALSA_CONFIG_PATH`` pointing at that file: the daemon records through ``arecord`` as
it would from a USB microphone. (Checked on Debian 12: the capture is the file, byte
for byte.)
"""

from __future__ import annotations

import array
import asyncio
import io
import os
import shutil
import subprocess
import wave
from pathlib import Path

from sosbeacon.device.voice import RATE
from sosbeacon.hw.microphone import AlsaMicrophone

SENTENCE = "This is Sam. I have fallen near the bridge and hurt my leg. Please come quickly."
PCM = "sosmic"

_CONF = """# the simulated microphone (sim/microphone.py): capture plays {infile}
pcm.sosnull {{ type null }}
pcm.sosmic_file {{
    type file
    slave.pcm "sosnull"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.{pcm} {{
    type plug
    slave {{ pcm "sosmic_file"; format S16_LE; rate {rate}; channels 1 }}
}}
"""


def speak(text: str, seconds: float) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz mono PCM, padded with silence (or cut)
    to ``seconds``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: sudo apt-get install espeak-ng")
    out = subprocess.run([exe, "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        src_rate, frames = w.getframerate(), w.readframes(w.getnframes())
    src = array.array("h", frames)
    n = int(len(src) * RATE / src_rate)
    step = src_rate / RATE
    dst = array.array("h", (src[min(len(src) - 1, int(i * step))] for i in range(n)))
    total = int(seconds * RATE)
    dst = dst[:total]
    dst.extend([0] * (total - len(dst)))
    return dst.tobytes()


def make(directory: Path, *, seconds: float, text: str = SENTENCE) -> AlsaMicrophone:
    """The files above in ``directory``, and the microphone that records from them."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "speech.raw"
    raw.write_bytes(speak(text, seconds + 2))
    conf = directory / "asound.conf"
    conf.write_text(_CONF.format(infile=raw, pcm=PCM, rate=RATE))
    env = {**os.environ, "ALSA_CONFIG_PATH": str(conf)}
    return AlsaMicrophone(PCM, env=env)


class SimMicrophone:
    """The simulator backend's microphone: the speech is made at the first recording
    (a daemon that never records never runs espeak-ng)."""

    def __init__(self, directory: Path, text: str = SENTENCE) -> None:
        self.directory = directory
        self.text = text
        self._mic: AlsaMicrophone | None = None
        self._seconds = 0.0

    async def record(self, seconds: float) -> bytes:
        if self._mic is None or seconds > self._seconds:
            try:
                self._mic = await asyncio.to_thread(
                    make, self.directory, seconds=seconds, text=self.text
                )
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                raise OSError(f"the simulated microphone has no speech: {exc}") from None
            self._seconds = seconds
        return await self._mic.record(seconds)
