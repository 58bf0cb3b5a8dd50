"""A relay beside a throwaway broker, in this process: for the demo, the drills, the
benchmarks and the tests. The real :class:`relay.service.Relay` with its web page on a
free loopback port, SQLite in a work directory (or the database given), no map tiles
(nothing leaves the machine), and the clock of the caller's choosing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from sosbeacon.relay import config as relay_config
from sosbeacon.relay.cli import open_store
from sosbeacon.relay.config import RelayConfig
from sosbeacon.relay.service import Relay
from sosbeacon.sim.relay_process import loopback_values


def settings(workdir: Path, broker_port: int, *, db_url: str = "", **overrides: Any) -> RelayConfig:
    values = loopback_values(workdir / "relay", f"mqtt://127.0.0.1:{broker_port}", db_url=db_url)
    return relay_config.load(text="", overrides={**values, **overrides})


@contextlib.asynccontextmanager
async def running(
    cfg: RelayConfig,
    *,
    clock: Callable[[], float] = time.time,
    wait_for_broker: bool = True,
    **kw: Any,
) -> AsyncIterator[Relay]:
    """The relay, connected to its broker (unless ``wait_for_broker`` is off) and serving
    its page, until the block ends."""
    store = open_store(cfg)
    relay = Relay(cfg, store, clock=clock, **kw)
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(20):
            if wait_for_broker:
                await relay.connected.wait()
            async with httpx.AsyncClient(base_url=cfg.relay.public_url, timeout=5) as http:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    if task.done():
                        task.result()  # the relay failed to start: say why
                    await asyncio.sleep(0.05)
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
