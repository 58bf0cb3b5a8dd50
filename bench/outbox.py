"""Durable intake: fixes committed per second to the outbox (WAL, synchronous=FULL).

Fixes arrive as a stream of concurrent ``store()`` calls, as a 10 Hz receiver and a
backlog replay would produce them; group commit batches whatever arrives during one
fsync. Measured on the machine's own disk, in a temporary directory.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sosbeacon.device.outbox import Outbox
from sosbeacon.device.records import Priority, Record, RecordKind

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fix_record(i: int) -> Record:
    return Record(
        kind=RecordKind.FIX,
        time=T0 + timedelta(seconds=i),
        priority=Priority.ROUTINE,
        data={
            "fix": {
                "t": (T0 + timedelta(seconds=i)).isoformat(),
                "lat": 55.95 + i * 1e-6,
                "lon": -3.17,
                "acc": 5.0,
            }
        },
    )


async def _intake(n: int, concurrency: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="sos-bench-") as tmp:
        async with await Outbox.open(Path(tmp) / "o.db") as box:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with sem:
                    await box.store(fix_record(i))

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return n / (time.perf_counter() - t0), box.commits


def run(rounds: int = 5, n: int = 20_000) -> dict[str, Any]:
    rates, commits = [], []
    for _ in range(rounds):
        rate, c = asyncio.run(_intake(n, concurrency=1000))
        rates.append(rate)
        commits.append(c)
    one_by_one = [asyncio.run(_intake(500, concurrency=1))[0] for _ in range(3)]
    return {
        "fixes_committed_per_s_median": round(statistics.median(rates)),
        "fixes_per_commit_median": round(n / statistics.median(commits), 1),
        "one_at_a_time_commits_per_s_median": round(statistics.median(one_by_one)),
        "target_fixes_per_s": 5000,
    }
