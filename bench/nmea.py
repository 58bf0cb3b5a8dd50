"""NMEA decode throughput: our decoder beside pynmea2 and pynmeagps, on the same bytes.

The input is the real-receiver corpus (``shared/gpsd-logs``), or a simulated capture when
the corpus is not there. Each figure is the median of several rounds, and each ratio the
median of the ratios within one round (every decoder timed once per round, in turn),
which is what survives a shared machine whose speed drifts between rounds.
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
from sosbeacon.hw.nmea.decoder import REPEATS
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


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(rounds: int = 9) -> dict[str, Any]:
    """Rates of each decoder, the median over ``rounds``; each round times every decoder
    once, one after the other, so a ratio is taken within one round (a shared core's
    speed drifts by tens of percent between rounds) and the median of those is given."""
    data, source = corpus()
    lines = [ln.strip() for ln in data.splitlines() if ln.startswith(b"$")]
    text = [ln.decode("ascii", "replace") for ln in lines]
    n = len(lines)

    def ours_full(repeats: int = REPEATS) -> None:
        d = NmeaDecoder(repeats=repeats)
        d.feed(data)
        d.flush()

    def ours_sentences() -> None:
        for ln in lines:
            split_sentence(ln)

    def with_pynmea2() -> None:
        for s in text:
            with contextlib.suppress(pynmea2.ParseError, ValueError, AttributeError):
                pynmea2.parse(s, check=True)

    def with_pynmeagps() -> None:
        errors = (
            pynmeagps.NMEAParseError,
            pynmeagps.NMEATypeError,
            pynmeagps.NMEAMessageError,
            ValueError,
        )
        for ln in lines:
            with contextlib.suppress(*errors):
                pynmeagps.NMEAReader.parse(ln)

    racers: dict[str, Callable[[], object]] = {
        "ours": ours_full,
        "ours_no_repeats": lambda: ours_full(0),
        "split": ours_sentences,
        "pynmea2": with_pynmea2,
    }
    times: dict[str, list[float]] = {name: [] for name in racers}
    for r in range(rounds):
        order = list(racers)[r % len(racers) :] + list(racers)[: r % len(racers)]
        for name in order:
            times[name].append(_seconds(racers[name]))
    pg = [_seconds(with_pynmeagps) for _ in range(max(3, rounds // 3))]

    def rate(name: str) -> int:
        return round(n / statistics.median(times[name]))

    def ratio(name: str) -> float:
        return round(
            statistics.median(p / t for p, t in zip(times["pynmea2"], times[name], strict=True)), 2
        )

    return {
        "input": f"{source}, {n} sentences, {len(data)} bytes",
        "ours_full_pipeline_sentences_per_s": rate("ours"),
        "ours_full_pipeline_without_repeats_sentences_per_s": rate("ours_no_repeats"),
        "ours_validate_and_split_sentences_per_s": rate("split"),
        "pynmea2_parse_sentences_per_s": rate("pynmea2"),
        "pynmeagps_parse_sentences_per_s": round(n / statistics.median(pg)),
        "ratio_ours_full_vs_pynmea2": ratio("ours"),
        "ratio_ours_full_without_repeats_vs_pynmea2": ratio("ours_no_repeats"),
        "target_ratio": ">= 1.0",
    }
