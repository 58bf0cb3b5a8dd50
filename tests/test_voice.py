"""Voice notes on the device, end to end: the real daemon records from the simulated
microphone through ALSA (``arecord`` on a ``file`` PCM playing a sentence espeak-ng
spoke), encodes Ogg Opus with ``opusenc``, stores chunks in the outbox and publishes them
on ``voice``; a contact on the broker joins them, checks the hash, and decodes the clip
with ``opusdec``: its length is the recording's, and it is speech, not silence."""

from __future__ import annotations

import array
import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device import config as config_mod
from sosbeacon.device.control import request
from sosbeacon.device.wire import ClipError, Received, join_clip, split_clip
from sosbeacon.sim.receiver import Receiver
from tests.conftest import find_tool, require
from tests.helpers import eventually, sim_daemon
from tests.test_daemon import broker_and_contact, config_text


def need_audio_tools() -> None:
    for tool, package in (
        ("arecord", "alsa-utils"), ("opusenc", "opus-tools"), ("opusdec", "opus-tools"),
        ("espeak-ng", "espeak-ng"),
    ):  # fmt: skip
        require(tool, find_tool(tool) is not None, f"sudo apt-get install {package}")


def voice_config(data: Path, port: int, *, share: bool = True, seconds: int = 4) -> str:
    """The daemon tests' configuration, voice shared (or not), messages of 4 KiB at most
    (so that a note goes in several chunks)."""
    text = config_text(data, port).replace("[uplink]\n", "[uplink]\nmax_message_bytes = 4096\n")
    voice = f"[privacy]\nshare_voice = {str(share).lower()}\n[voice]\nseconds = {seconds}\n"
    return text.replace("[mqtt]", voice + "[mqtt]")


def clips(rx: Receiver) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for r in rx.records:
        if r.kind == "voice":
            out.setdefault(r.data["clip"], []).append(r)
    return out


def decoded(clip: bytes, tmp: Path) -> array.array[int]:
    """The clip as 48 kHz PCM, by opusdec."""
    (tmp / "c.opus").write_bytes(clip)
    subprocess.run(
        ["opusdec", "--quiet", "--rate", "16000", "--force-wav", str(tmp / "c.opus"),
         str(tmp / "c.wav")],
        check=True,
    )  # fmt: skip
    raw = (tmp / "c.wav").read_bytes()[44:]
    return array.array("h", raw)


def whole(rx: Receiver) -> Any:
    got = clips(rx)
    for chunks in got.values():
        if chunks and len({c.data["i"] for c in chunks}) == chunks[0].data["n"]:
            return chunks
    return None


async def test_an_sos_records_a_voice_note_that_arrives_whole_and_speaks(
    tmp_path: Path,
) -> None:
    need_audio_tools()
    async with broker_and_contact(tmp_path) as (broker, rx):
        cfg = config_mod.load(text=voice_config(tmp_path / "data", broker.port))
        async with sim_daemon(cfg):
            sock = cfg.socket_path
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            chunks = await eventually(lambda: whole(rx), within=30)
            first = chunks[0]
            assert first.session and first.data["why"] == "sos-start"
            assert first.data["codec"] == "opus" and first.data["mime"] == "audio/ogg"
            # small on the wire: each chunk's message under the broker limit the uplink knew
            sizes = [len(d.payload) for d in rx.history if d.topic.endswith("/voice")]
            assert sizes and max(sizes) <= 4096 and len(sizes) >= 2
            clip = join_clip(c.data for c in chunks)
            assert clip.startswith(b"OggS")
            # the SOS start went first: the note never held it up
            seqs = {r.kind: r.seq for r in rx.records if r.kind in ("sos-start", "voice")}
            assert seqs["sos-start"] < min(c.seq for c in chunks)
            pcm = decoded(clip, tmp_path)
            seconds = len(pcm) / 16000
            assert 3.9 <= seconds <= 4.1 and abs(first.data["dur"] - 4.0) < 0.05
            loud = max(abs(x) for x in pcm[: 16000 * 3])
            assert loud > 3000  # a spoken sentence, not silence
            # a contact asks for another: voice-now records a second note
            answer = await request(sock, {"cmd": "voice-now", "by": "Alice"})
            assert answer["ok"] and answer["seconds"] == 4
            await eventually(lambda: len(clips(rx)) == 2, within=30)
            status = await request(sock, {"cmd": "status"})
            assert status["shared"]["voice"] is True and status["voice"]["stored"] == 2
            from sosbeacon.device.cli import format_status

            shown = format_status(status)
            assert "shares      location (exact), battery, events, voice" in shown
            assert "voice       2 note(s) stored, 0 failed" in shown
            # the notes expire with the route, on the device too
            assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
            exported = await request(sock, {"cmd": "export"})
            notes = [r for r in exported["records"] if r["kind"] == "voice"]
            assert notes and all(r["expires"] for r in notes)


async def test_without_share_voice_nothing_is_recorded_and_voice_now_is_refused(
    tmp_path: Path,
) -> None:
    need_audio_tools()
    async with broker_and_contact(tmp_path) as (broker, rx):
        cfg = config_mod.load(text=voice_config(tmp_path / "data", broker.port, share=False))
        async with sim_daemon(cfg):
            sock = cfg.socket_path
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await eventually(lambda: any(r.kind == "sos-start" for r in rx.records))
            answer = await request(sock, {"cmd": "voice-now", "by": "Alice"})
            assert not answer["ok"] and "privacy.share_voice" in answer["error"]
            await asyncio.sleep(6)  # longer than a note would take
            assert clips(rx) == {}
            assert not any(d.topic.endswith("/voice") for d in rx.history)
            exported = await request(sock, {"cmd": "export"})
            assert not [r for r in exported["records"] if r["kind"] == "voice"]
            start = next(r for r in rx.records if r.kind == "sos-start")
            assert start.data["shared"]["voice"] is False
            assert not (cfg.device.data_dir / "sim" / "mic").exists()  # never even spoke


async def test_a_missing_microphone_is_one_clear_line_and_the_sos_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sosbeacon.hw.microphone import AlsaMicrophone

    need_audio_tools()
    async with broker_and_contact(tmp_path) as (broker, rx):
        cfg = config_mod.load(text=voice_config(tmp_path / "data", broker.port))
        async with sim_daemon(cfg) as daemon:
            assert daemon.voice is not None
            daemon.voice._mic = AlsaMicrophone("no_such_microphone")
            sock = cfg.socket_path
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await eventually(lambda: daemon.voice is not None and daemon.voice.failed == 1)
            assert "no voice note (the SOS carries on)" in caplog.text
            assert "no_such_microphone" in caplog.text
            status = await request(sock, {"cmd": "status"})
            assert status["state"] == "active" and "no_such_microphone" in str(
                status["voice"]["last_error"]
            )
            events = [e.data for e in daemon.events.recent() if e.kind.value == "voice"]
            assert [e["what"] for e in events] == ["recording", "failed"]
            await eventually(lambda: any(r.kind == "sos-start" for r in rx.records))


def test_chunks_join_only_into_the_clip_they_describe() -> None:
    clip = bytes(range(256)) * 40
    chunks = split_clip(clip, clip_id="c1", seconds=2.0, max_payload=2048, why="sos-start")
    assert len(chunks) > 1 and all(c["n"] == len(chunks) for c in chunks)
    assert join_clip(reversed(chunks + chunks[:1])) == clip  # any order, a duplicate
    with pytest.raises(ClipError, match="missing"):
        join_clip(chunks[1:])
    forged = [dict(c) for c in chunks]
    forged[0]["chunk"] = forged[1]["chunk"]
    with pytest.raises(ClipError):
        join_clip(forged)
    with pytest.raises(ClipError, match="not a voice chunk"):
        join_clip([{"i": 0}])
    other = split_clip(b"x" * 10, clip_id="c2", seconds=1.0, max_payload=2048, why="x")
    with pytest.raises(ClipError, match="different clips"):
        join_clip(chunks + other)
