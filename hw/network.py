"""Bring the uplink up when an SOS starts: a NetworkManager connection via ``nmcli``.

A beacon on a cellular modem may keep the connection down to save power; the SOS must
not wait for someone to notice. ``nmcli connection up id NAME`` is what NetworkManager
users run by hand; it is idempotent when the connection is already up.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

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
