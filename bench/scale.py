"""``make scale``: the cost curve. The fleet (``sos-sim fleet``) at several sizes, each
once with one relay on SQLite and once with two relays on PostgreSQL sharing one
subscription; every point's figures in ``docs/scaling-results.json``, a plot in
``docs/scaling.png`` and the table between the markers in ``docs/scaling.md``.

Each point runs ``SCALE_SECONDS`` (90) with one SOS started per minute for every ten
devices, each lasting a minute: about a tenth of the fleet in SOS at once, each watched.
``SCALE_DEVICES`` (``100,300,1000``) sets the sizes. Not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"


def point(devices: int, relays: int, database: str, seconds: float) -> dict[str, Any]:
    cmd = [
        sys.executable, "-c", "from sosbeacon.sim.cli import main; raise SystemExit(main())",
        "fleet", "--devices", str(devices), "--duration", str(seconds),
        "--sos-per-minute", str(devices / 10), "--sos-seconds", "60",
        "--relays", str(relays), "--database", database, "--json",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"devices": devices, "relays": relays, "database": database,
                "error": (res.stderr.strip().splitlines() or ["no output"])[-1]}  # fmt: skip
    out: dict[str, Any] = json.loads(lines[-1])
    out.pop("per_second", None)
    return out


def table(points: list[dict[str, Any]]) -> str:
    rows = [
        "| devices | relays, database | SOSes | fixes stored | lost | relay CPU ms / 1,000 fixes "
        "| gesture → stored p99 | gesture → page p99 | point → page p99 | DB rows / device-day "
        "| DB KB / device-day | broker peak MiB | fleet CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        setup = f"{p['relays']} on {p['database']}"
        if "error" in p:
            rows.append(f"| {p['devices']} | {setup} | not measured: {p['error']} |" + " |" * 10)
            continue
        stored, page = p["gesture_to_stored_ms"]["p99"], p["gesture_to_page_ms"]["p99"]
        rows.append(
            f"| {p['devices']} | {setup} | {p['sos_started']} | {p['fixes_stored']} "
            f"| {p['records_lost']} | {p['relay_cpu_ms_per_1000_fixes']:.0f} "
            f"| {stored:.0f} ms | {page:.0f} ms "
            f"| {p['fix_to_page_ms']['p99']:.0f} ms | {p['db_rows_per_device_day']:.0f} "
            f"| {p['db_bytes_per_device_day'] / 1024:.0f} | {p['broker_peak_rss_kib'] / 1024:.1f} "
            f"| {p['fleet_cpu_s']:.0f} |"
        )
    return "\n".join(rows)


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu, lat) = plt.subplots(1, 2, figsize=(10, 4))
    for setup in sorted({(p["relays"], p["database"]) for p in points}):
        got = [p for p in points if (p["relays"], p["database"]) == setup and "error" not in p]
        n = [p["devices"] for p in got]
        label = f"{setup[0]} relay(s), {setup[1]}"
        cpu.plot(n, [p["relay_cpu_ms_per_1000_fixes"] for p in got], "o-", label=label)
        lat.plot(n, [p["fix_to_page_ms"]["p99"] for p in got], "o-", label=label)
    cpu.set(xlabel="devices (a tenth in SOS)", ylabel="relay CPU ms per 1,000 fixes",
            title="Relay cost")  # fmt: skip
    lat.set(xlabel="devices (a tenth in SOS)", ylabel="ms", title="Route point → page, p99")
    for ax in (cpu, lat):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    sizes = [int(n) for n in os.environ.get("SCALE_DEVICES", "100,300,1000").split(",")]
    seconds = float(os.environ.get("SCALE_SECONDS", "90"))
    points = []
    for n in sizes:
        for relays, database in ((1, "sqlite"), (2, "postgresql")):
            sys.stdout.write(f"{n} devices, {relays} relay(s) on {database} ... ")
            sys.stdout.flush()
            p = point(n, relays, database, seconds)
            points.append(p)
            sys.stdout.write(f"{p.get('error') or 'done'}\n")
    (DOCS / "scaling-results.json").write_text(json.dumps(points, indent=1) + "\n")
    plot(points, DOCS / "scaling.png")
    text = table(points)
    sys.stdout.write("\n" + text + "\n")
    doc = DOCS / "scaling.md"
    body = doc.read_text()
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        doc.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    sys.stdout.write(f"wrote {doc}, docs/scaling.png and docs/scaling-results.json\n")
    lost = sum(p.get("records_lost", 0) for p in points)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
