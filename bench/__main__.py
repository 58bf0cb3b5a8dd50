"""Run every benchmark, print a table, write ``bench-results.json``."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime

from bench import nmea, outbox, uplink


def main() -> int:
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "nmea_decode": nmea.run(),
        "outbox_intake": outbox.run(),
        "uplink": uplink.run(),
    }
    w = sys.stdout.write
    w(f"sosbeacon bench — {results['machine']} — {results['when']}\n\n")
    w("NMEA decode (median of 7 rounds, same run)\n")
    for key, value in results["nmea_decode"].items():
        w(f"  {key:45} {value}\n")
    w("\nDurable intake: outbox, WAL + synchronous=FULL (median of 5 rounds of 20,000)\n")
    for key, value in results["outbox_intake"].items():
        w(f"  {key:45} {value}\n")
    w("\nUplink: wire size on the sample walk; delivery through a local Mosquitto (3 rounds)\n")
    for key, value in results["uplink"].items():
        w(f"  {key:62} {value}\n")
    with open("bench-results.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    w("\nwrote bench-results.json\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
