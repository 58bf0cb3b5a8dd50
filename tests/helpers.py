"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sosbeacon.device.gps import Fix, GpsSource


@dataclass
class Collector:
    """Consumes a GPS source in the background; tests await conditions on what arrived."""

    source: GpsSource
    fixes: list[Fix] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        async for fix in self.source.fixes():
            async with self._changed:
                self.fixes.append(fix)
                self._changed.notify_all()

    async def wait_for(self, count: int, *, positioned: bool = True, timeout: float = 10) -> None:
        """Until ``count`` more (positioned) fixes than now have arrived."""

        def n() -> int:
            return sum(1 for f in self.fixes if f.has_position or not positioned)

        target = n() + count
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: n() >= target)


@contextlib.asynccontextmanager
async def collecting(source: GpsSource) -> AsyncIterator[Collector]:
    c = Collector(source)
    task = asyncio.create_task(c.run())
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(cond: Any, within: float = 20.0, step: float = 0.05) -> Any:
    """Until ``cond()`` (sync or async) is truthy, for what gives no event to wait on
    (another process, a bus); returns its value. Raises TimeoutError after ``within``."""
    async with asyncio.timeout(within):
        while True:
            got = cond()
            if asyncio.iscoroutine(got):
                got = await got
            if got:
                return got
            await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def sim_daemon(config: Any) -> AsyncIterator[Any]:
    """The real daemon on the simulator's hardware, ready, stopped afterwards."""
    from sosbeacon.device.daemon import Daemon
    from sosbeacon.device.parts import load_backend

    daemon = Daemon(config, load_backend("sim"), handle_signals=False)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 15)
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


def export_problems(doc: Any) -> list[str]:
    """Where ``doc`` (an export's JSON) breaks docs/export.schema.json, formats included."""
    import json

    import jsonschema

    from tests.conftest import REPO

    schema = json.loads((REPO / "docs" / "export.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
