"""``sos-relay run`` as a process of its own, for the tests and the fleet that need a
real one: killed with SIGKILL, restarted, several side by side on one database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from sosbeacon.sim.broker import free_port
from sosbeacon.sim.sosd_process import REPO


def toml_text(values: dict[str, Any]) -> str:
    """TOML for dotted keys (``"notify.services.email": "..."``): one table per section,
    in the order they first appear. Strings, numbers and booleans (JSON's forms are
    TOML's)."""
    tables: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.rpartition(".")
        tables.setdefault(section, {})[key] = value
    out = ""
    for section, table in tables.items():
        body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        out += f"[{section}]\n{body}" if section else body
    return out


def loopback_values(data_dir: Path, broker: str, *, db_url: str = "") -> dict[str, Any]:
    """A relay on loopback for the demo, the drills, the tests and the fleet: its page on
    a free port, no map tiles (nothing leaves the machine), fast retries of a failed
    notification, SQLite in ``data_dir`` unless ``db_url`` is given."""
    port = free_port()
    values: dict[str, Any] = {
        "relay.data_dir": str(data_dir),
        "relay.public_url": f"http://127.0.0.1:{port}",
        "relay.sweep_interval": 3600.0,
        "mqtt.broker": broker,
        "mqtt.client_id": f"relay-{port}",
        "web.listen": f"127.0.0.1:{port}",
        "web.tiles": "",  # no tile server: the route shows on its own
        "notify.retry_min": 0.2,
        "notify.retry_max": 1.0,
    }
    if db_url:
        values["database.url"] = db_url
    return values


def relay_values(
    workdir: Path, name: str, broker: str, db_url: str, mail: str, *, group: str = "relays"
) -> dict[str, Any]:
    """A relay's configuration beside its siblings: its own directory, web port and
    client id; the shared link key, database, broker and group; e-mail to ``mail``."""
    return {
        **loopback_values(workdir / name, broker, db_url=db_url),
        "relay.link_key_file": str(workdir / "link.key"),  # relays on one database share it
        "mqtt.client_id": f"relay-{name}",
        "mqtt.group": group,
        "notify.services.email": mail,
    }


class RelayProcess:
    """One ``sos-relay run --config <workdir>/sos-relay.toml``, its output in
    ``<workdir>/sos-relay.log``."""

    def __init__(self, workdir: Path, values: dict[str, Any]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sos-relay.toml"
        self.config.write_text(toml_text(values))
        self.log = workdir / "sos-relay.log"
        self.base = str(values["relay.public_url"])
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, within: float = 30.0) -> None:
        """Start it; returns once its page answers and it is connected to its broker."""
        with self.log.open("a") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from sosbeacon.relay.launch import main; main()",
                "--config", str(self.config), "run",
                stdout=out, stderr=out, cwd=REPO,
            )  # fmt: skip
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"sos-relay exited at start; see {self.log}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if (await http.get("/healthz")).json().get("mqtt"):
                        return
                await asyncio.sleep(0.05)
        await self.kill()
        raise RuntimeError(f"sos-relay did not come up within {within:.0f} s; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the relay is not running"
        return self.proc.pid

    def pause(self) -> None:
        """``kill -STOP``: a relay that does nothing (its connections stay open)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """``kill -9``: no goodbye to the broker, nothing flushed."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
