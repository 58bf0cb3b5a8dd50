"""NMEA decode throughput: our decoder beside pynmea2 and pynmeagps, on the same bytes.

The input is the real-receiver corpus (``shared/gpsd-logs``), or a simulated capture when
the corpus is not there. Each figure is the median of several rounds; the ratio is taken
between medians of the same run, which is what survives a noisy shared machine.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynmea2
import pynmeagps

from sosbeacon.hw.nmea import NmeaDecoder
from sosbeacon.hw.nmea.sentences import split_sentence
from sosbeacon.sim.gps.runner import capture_lines

REPO = Path(__file__).resolve().parents[1]


def corpus() -> tuple[bytes, str]:
    d = Path(os.environ.get("SOSBEACON_SHARED", REPO.parent / "shared")) / "gpsd-logs"
    logs = sorted(d.glob("*.log"))
    if logs:
        data = b"".join(line for p in logs for line in capture_lines(p))
        return data, f"{len(logs)} real captures"
    from datetime import UTC, datetime

    from sosbeacon.sim.gps import Route, RouteWalker, SimReceiver

    rx = SimReceiver(RouteWalker(Route.sample(), 1.4), start=datetime(2026, 1, 1, tzinfo=UTC))
    return b"".join(rx.epoch(n)[0] for n in range(3000)), "simulated capture"


def _rate(fn: Callable[[], int], rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def run(rounds: int = 7) -> dict[str, Any]:
    data, source = corpus()
    lines = [ln.strip() for ln in data.splitlines() if ln.startswith(b"$")]
    text = [ln.decode("ascii", "replace") for ln in lines]

    def ours_full() -> int:
        d = NmeaDecoder()
        d.feed(data)
        d.flush()
        return len(lines)

    def ours_sentences() -> int:
        for ln in lines:
            split_sentence(ln)
        return len(lines)

    def with_pynmea2() -> int:
        for s in text:
            with contextlib.suppress(pynmea2.ParseError, ValueError, AttributeError):
                pynmea2.parse(s, check=True)
        return len(text)

    def with_pynmeagps() -> int:
        errors = (
            pynmeagps.NMEAParseError,
            pynmeagps.NMEATypeError,
            pynmeagps.NMEAMessageError,
            ValueError,
        )
        for ln in lines:
            with contextlib.suppress(*errors):
                pynmeagps.NMEAReader.parse(ln)
        return len(lines)

    ours = _rate(ours_full, rounds)
    ours_split = _rate(ours_sentences, rounds)
    p2 = _rate(with_pynmea2, rounds)
    pg = _rate(with_pynmeagps, max(3, rounds // 2))
    return {
        "input": f"{source}, {len(lines)} sentences, {len(data)} bytes",
        "ours_full_pipeline_sentences_per_s": round(ours),
        "ours_validate_and_split_sentences_per_s": round(ours_split),
        "pynmea2_parse_sentences_per_s": round(p2),
        "pynmeagps_parse_sentences_per_s": round(pg),
        "ratio_ours_full_vs_pynmea2": round(ours / p2, 2),
    }
