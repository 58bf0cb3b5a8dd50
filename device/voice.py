"""Voice notes: a short recording beside an SOS, small on the wire, durable in the
outbox until it is delivered, gone with the route.

* **When.** Only with ``privacy.share_voice`` (off by default): ``voice.seconds`` (20)
  when an SOS starts, and again when a contact sends ``voice-now``. One recording at a
  time; a ``voice-now`` during one is answered with the one under way.
* **Never in the way.** The recording runs as its own task beside the SOS: the start
  record and the first fix never wait for it. A missing or busy microphone, or an
  encoder that fails, is one log line and a ``voice`` event (``failed``), never a failed
  SOS.
* **Small.** The PCM (:data:`RATE` Hz mono, 16-bit) is encoded to Ogg Opus at a speech
  bitrate (``voice.bitrate``, 16 kbit/s: a 20 s note is about 35-40 KB) by ``opusenc``
  (Debian ``opus-tools``).
* **Chunks.** The clip is stored as ``voice`` records of priority ``VOICE`` (after the
  SOS lifecycle and live positions, before the routine backlog), each small enough for
  one message under the broker's limit as the uplink knows it (``max_payload``), with
  the clip's id, the chunk's index and count, codec, duration, size and the whole
  clip's SHA-256 (docs/wire-format.md, ``voice``). They belong to the SOS session, so
  they expire with its route, 72 h after the end, on the device and as MQTT expiry.
* **The SOS ended meanwhile**: a note that finished recording after the stop is not
  stored (sharing stops at once).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sosbeacon.device.actuators import Microphone
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.records import Priority, RecordKind
from sosbeacon.device.sos import SosController, SosRefused
from sosbeacon.device.wire import split_clip

log = logging.getLogger(__name__)

#: the PCM a microphone gives: Hz, mono, signed 16-bit little-endian
RATE = 16_000


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    #: seconds recorded at SOS start and at each voice-now
    seconds: float = 20.0
    #: Opus bitrate, kbit/s (6-64; speech is clear at 16)
    bitrate: int = 16
    #: the ALSA capture device (``arecord -L`` lists them): "default", "plughw:1,0", ...
    device: str = "default"


class VoiceError(OSError):
    """Recording or encoding failed; the message says what to do."""


#: PCM in, Ogg Opus out (:func:`encode_opus`; tests pass their own)
Encoder = Callable[[bytes, int, int], Awaitable[bytes]]


async def encode_opus(pcm: bytes, rate: int, bitrate: int) -> bytes:
    """Ogg Opus of ``pcm`` (mono, 16-bit), through ``opusenc`` on pipes."""
    exe = shutil.which("opusenc")
    if exe is None:
        raise VoiceError("opusenc not found: install opus-tools (apt-get install opus-tools)")
    proc = await asyncio.create_subprocess_exec(
        exe, "--quiet", "--raw", "--raw-rate", str(rate), "--raw-chan", "1",
        "--raw-bits", "16", "--bitrate", str(bitrate), "--speech", "-", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(pcm)
    if proc.returncode != 0 or not out.startswith(b"OggS"):
        raise VoiceError(f"opusenc failed: {last_said(err, f'exit {proc.returncode}')}")
    return out


def last_said(stderr: bytes, otherwise: str) -> str:
    """A tool's last line on stderr (what it says went wrong), or ``otherwise``."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else otherwise


def duration(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


class VoiceNotes:
    def __init__(
        self,
        *,
        config: VoiceConfig,
        microphone: Microphone,
        controller: SosController,
        events: Events,
        max_payload: Callable[[], int],
        encoder: Encoder = encode_opus,
    ) -> None:
        self.config = config
        self._mic = microphone
        self._ctl = controller
        self._events = events
        self._max_payload = max_payload
        self._encode = encoder
        #: the recording under way: its clip id and task
        self._busy: tuple[str, asyncio.Task[None]] | None = None
        self.stored = 0
        self.failed = 0
        self.last_error = ""
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Record a note whenever an SOS starts (not when one resumes after a restart:
        its note was recorded, or lost with the power)."""
        async with self._events.follow() as stream:
            self.listening.set()
            async for ev in stream:
                if ev.kind is EventKind.SOS and ev.data.get("what") == "started":
                    s = self._ctl.session
                    if s is not None and self._ctl.privacy.share_voice:
                        self.start(s.id, "sos-start")

    def start(self, session: str, why: str) -> str:
        """Begin a note for ``session`` (or join the one under way); its clip id."""
        if self._busy is not None and not self._busy[1].done():
            return self._busy[0]
        clip = uuid.uuid4().hex[:12]
        task = asyncio.create_task(self._note(session, clip, why))
        self._busy = (clip, task)
        return clip

    async def now(self, by: str | None) -> dict[str, Any]:
        """A contact's ``voice-now``: refused unless an SOS runs and voice is shared."""
        if not self._ctl.privacy.share_voice:
            raise SosRefused("voice notes are not shared (the owner's privacy.share_voice)")
        s = self._ctl.session
        if s is None:
            raise SosRefused("no SOS is active: no voice note is recorded")
        return {"clip": self.start(s.id, f"voice-now:{by or ''}"), "seconds": self.config.seconds}

    async def _note(self, session: str, clip: str, why: str) -> None:
        self._events.emit(EventKind.VOICE, what="recording", clip=clip, session=session)
        try:
            pcm = await self._mic.record(self.config.seconds)
            ogg = await self._encode(pcm, RATE, self.config.bitrate)
        except OSError as exc:
            self._fail(session, clip, str(exc) or type(exc).__name__)
            return
        seconds = duration(pcm)
        chunks = split_clip(
            ogg, clip_id=clip, seconds=seconds, max_payload=self._max_payload(), why=why
        )
        try:
            await self._ctl.attach(RecordKind.VOICE, chunks, Priority.VOICE, session)
        except SosRefused:
            log.warning("voice note %s not shared: the SOS ended while it was recording", clip)
            self._events.emit(EventKind.VOICE, what="dropped", clip=clip, session=session)
            return
        self.stored += 1
        log.info(
            "voice note %s: %.1f s, %d bytes in %d chunk(s)", clip, seconds, len(ogg), len(chunks)
        )
        self._events.emit(
            EventKind.VOICE, what="stored", clip=clip, session=session,
            seconds=round(seconds, 1), bytes=len(ogg), chunks=len(chunks),
        )  # fmt: skip

    def _fail(self, session: str, clip: str, error: str) -> None:
        self.failed += 1
        self.last_error = error
        log.error("no voice note (the SOS carries on): %s", error)
        self._events.emit(EventKind.VOICE, what="failed", clip=clip, session=session, error=error)

    def status(self) -> dict[str, Any]:
        return {
            "recording": self._busy is not None and not self._busy[1].done(),
            "stored": self.stored, "failed": self.failed, "last_error": self.last_error or None,
        }  # fmt: skip
