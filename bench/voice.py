"""Voice notes on loopback: how long from an SOS start until its 20 s note is whole at
the relay, and whether an SOS still reaches its subscriber as fast while notes are
being sent (same run: raw MQTT, then an SOS with notes draining beside it).

The simulated microphone (ALSA's ``file`` PCM through ``arecord``) gives its 20 s at
once, so the first figure is what the device and the relay add: capture, Opus encoding,
chunks into the outbox, the uplink, the relay joining and checking them. A real
microphone adds the recording's own 20 s.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.uplink import _ms, device, raw_round_trips, trigger_latencies
from sosbeacon.device.gesture import Detected, Gesture
from sosbeacon.device.privacy import PrivacyConfig
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.sos import Contact
from sosbeacon.device.voice import VoiceConfig, VoiceNotes
from sosbeacon.device.wire import split_clip
from sosbeacon.sim import localrelay
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.microphone import make


async def _to_relay(tmp: Path, port: int, notes: int, seconds: float) -> dict[str, Any]:
    mic = make(tmp / "mic", seconds=seconds)
    cfg = localrelay.settings(tmp, port)
    took: list[float] = []
    sizes: list[int] = []
    async with (
        localrelay.running(cfg) as relay,
        device(tmp, port, contacts=(Contact("Alice", "json:alice"),)) as dev,
    ):
        dev.controller.privacy = PrivacyConfig(share_voice=True)
        voice = VoiceNotes(
            config=VoiceConfig(seconds=seconds), microphone=mic, controller=dev.controller,
            events=dev.controller.events, max_payload=lambda: dev.uplink.limit.max_bytes,
        )  # fmt: skip
        follower = asyncio.create_task(voice.run())
        await voice.listening.wait()
        whole: asyncio.Queue[str] = asyncio.Queue()
        relay.observers.append(
            lambda what, d: whole.put_nowait(d["clip"]) if what == "voice-stored" else None
        )
        for _ in range(notes):
            t0 = time.perf_counter()
            await dev.controller.on_button(Detected(Gesture.LONG_PRESS, t0))
            await asyncio.wait_for(whole.get(), 60)
            took.append(time.perf_counter() - t0)
            sid = (await relay.store.list_links())[-1]["session_id"]
            note = await relay.store.voice(sid)
            assert note is not None
            sizes.append(len(note[2]))
            await dev.controller.stop(trigger="bench")
        follower.cancel()
    return {
        f"SOS start to its {seconds:.0f} s note whole at the relay, p50 / max ms "
        "(the recording's own time aside)": (
            round(statistics.median(took) * 1000, 1), round(max(took) * 1000, 1)
        ),
        f"a {seconds:.0f} s note, Ogg Opus 16 kbit/s, bytes (median)": round(
            statistics.median(sizes)
        ),
    }  # fmt: skip


async def _latency_beside_notes(tmp: Path, port: int, triggers: int, notes: int) -> dict[str, Any]:
    raw = await raw_round_trips(port, triggers)
    clip = (b"OggS" + uuid.uuid4().bytes) * 2400  # about 48 KB, as a long note
    async with device(tmp, port, contacts=(Contact("bench"),)) as dev:
        await trigger_latencies(dev, 1)  # the first SOS after start: code run the first time
        quiet = await trigger_latencies(dev, triggers)
        limit = dev.uplink.limit.max_bytes
        now = datetime.now(UTC)
        for n in range(notes):
            for data in split_clip(clip, clip_id=f"n{n}", seconds=20.0, max_payload=limit, why="x"):
                await dev.outbox.store(
                    Record(RecordKind.VOICE, now, data, Priority.VOICE, session="voice-bench")
                )
        t0 = time.perf_counter()
        busy = await trigger_latencies(dev, triggers)
        span = time.perf_counter() - t0
        left = await dev.outbox.has_undelivered()
        await dev.uplink.drained()
    return {
        "raw MQTT publish to receive, p50 / p99 ms": (_ms(raw, 0.5), _ms(raw, 0.99)),
        "SOS gesture to subscriber, no notes, p50 / p99 ms": (_ms(quiet, 0.5), _ms(quiet, 0.99)),
        f"SOS gesture to subscriber, {notes} notes ({notes * len(clip) // 1024} KiB) being "
        "sent, p50 / p99 ms": (_ms(busy, 0.5), _ms(busy, 0.99)),
        "p99 above raw: no notes / notes being sent, ms (target 10)": (
            round(_ms(quiet, 0.99) - _ms(raw, 0.99), 2), round(_ms(busy, 0.99) - _ms(raw, 0.99), 2)
        ),
        f"the {triggers} triggers took (s); notes still being sent after them": (
            round(span, 2), left
        ),
    }  # fmt: skip


def run(*, notes: int = 10, triggers: int = 200, seconds: float = 20.0) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="sos-bench-voice-") as tmp,
        Mosquitto(Path(tmp) / "broker", config="max_queued_messages 0\n") as broker,
    ):
        out = asyncio.run(_to_relay(Path(tmp) / "a", broker.port, notes, seconds))
        out.update(asyncio.run(_latency_beside_notes(Path(tmp) / "b", broker.port, triggers, 40)))
    return out


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v}")
