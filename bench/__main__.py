"""``make bench``: every benchmark, a table on stdout, and ``bench-results.json``.

Each comparison is made within the same run (the machine may be shared and noisy):
compare the ratios, not absolute figures across runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from datetime import UTC, datetime
from typing import Any

from bench import fleet, footprint, nmea, outbox, relay, uplink, voice


def section(title: str, figures: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"\n{title}\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = " / ".join(str(v) for v in value) if isinstance(value, tuple | list) else value
        w(f"  {key:<{width}}  {shown}\n")
    sys.stdout.flush()


def main() -> int:
    logging.disable(logging.WARNING)  # the daemon's SOS warnings are expected here
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
    }
    sys.stdout.write(f"sosbeacon bench — {results['machine']} — {results['when']}\n")
    plan = [
        ("nmea_decode", "NMEA decode (median of 9 rounds)", nmea.run),
        ("outbox_intake", "Durable intake: outbox, WAL + synchronous=FULL", outbox.run),
        ("uplink", "Uplink through Mosquitto on loopback", uplink.run),
        ("relay", "The contacts' relay (sos-relay) through Mosquitto on loopback", relay.run),
        ("fleet", "A fleet through the relay: a short point of the cost curve", fleet.run),
        ("voice", "Voice notes: device to relay, and SOS latency beside them", voice.run),
        ("footprint", "Footprint of sosd run, beside the 1 Hz floor", footprint.run),
    ]
    for key, title, fn in plan:
        results[key] = fn()
        section(title, results[key])
    with open("bench-results.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    sys.stdout.write("\nwrote bench-results.json\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
