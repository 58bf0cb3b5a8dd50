"""Bring the uplink up when an SOS starts: a NetworkManager connection via ``nmcli``;
and follow NetworkManager's state, so the uplink reconnects the moment the network is
back (:class:`NmcliMonitor`).

A beacon on a cellular modem may keep the connection down to save power; the SOS must
not wait for someone to notice. ``nmcli connection up id NAME`` is what NetworkManager
users run by hand; it is idempotent when the connection is already up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


class NmcliLink:
    """A :class:`device.actuators.NetworkLink` for one NetworkManager connection."""

    def __init__(self, *, connection: str, nmcli: str = "nmcli", timeout: float = 60.0) -> None:
        self.connection = connection
        self.nmcli = nmcli
        self.timeout = timeout

    async def up(self) -> None:
        exe = shutil.which(self.nmcli)
        if exe is None:
            log.error(
                "cannot bring up %r: nmcli not found (install network-manager, or "
                "remove network.connection from the configuration)",
                self.connection,
            )
            return
        proc = await asyncio.create_subprocess_exec(
            exe,
            "--wait",
            str(int(self.timeout)),
            "connection",
            "up",
            "id",
            self.connection,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout + 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("nmcli did not bring %r up within %.0fs", self.connection, self.timeout)
            return
        if proc.returncode != 0:
            log.error(
                "nmcli could not bring %r up (exit %d): %s",
                self.connection,
                proc.returncode,
                err.decode(errors="replace").strip(),
            )
        else:
            log.info("network connection %r is up", self.connection)


#: ``nmcli monitor``'s lines (LC_ALL=C: nmcli translates them) that say the network is
#: up or down; anything else (connecting, local only, a portal) changes nothing
_CONNECTIVITY = re.compile(r"^Connectivity is now '(\w+)'")
_STATE = re.compile(r"^Networkmanager is now in the '([^']+)' state")
_UP_STATES, _DOWN_STATES = {"connected", "full"}, {"disconnected", "asleep", "none"}


def monitor_says(line: str) -> bool | None:
    """What a line of ``nmcli monitor`` says of the network: up, down, or nothing."""
    m = _CONNECTIVITY.match(line) or _STATE.match(line)
    if m is None:
        return None
    word = m.group(1)
    return True if word in _UP_STATES else False if word in _DOWN_STATES else None


class NmcliMonitor:
    """A :class:`device.actuators.LinkMonitor`: NetworkManager's global state, read once
    (``nmcli -t -f STATE general``), then followed (``nmcli monitor``). If nmcli stops,
    it is started again after ``retry`` seconds."""

    def __init__(self, *, nmcli: str = "nmcli", retry: float = 5.0) -> None:
        self.nmcli = nmcli
        self.retry = retry

    async def changes(self) -> AsyncIterator[bool]:
        env = {**os.environ, "LC_ALL": "C"}
        while True:
            now = await self._run_once(env)
            if now is not None:
                yield now
            proc = await asyncio.create_subprocess_exec(
                self.nmcli, "monitor", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            try:
                async for raw in proc.stdout:
                    said = monitor_says(raw.decode(errors="replace").strip())
                    if said is not None:
                        yield said
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            log.warning("nmcli monitor stopped (exit %s); following it again", proc.returncode)
            await asyncio.sleep(self.retry)

    async def _run_once(self, env: dict[str, str]) -> bool | None:
        proc = await asyncio.create_subprocess_exec(
            self.nmcli, "-t", "-f", "STATE", "general", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        state = out.decode(errors="replace").strip()
        return True if state in _UP_STATES else False if state in _DOWN_STATES else None
