"""Throwaway servers for tests, on free loopback ports, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sosbeacon.sim.broker import free_port

__all__ = ["free_port", "gpsfake"]


@contextlib.contextmanager
def gpsfake(
    gpsfake_bin: str, log: Path, port: int, *, cycle: float = 0.02
) -> Iterator[subprocess.Popen[bytes]]:
    """Real gpsd fed by ``gpsfake`` from ``log``, listening on ``port``."""
    env = dict(os.environ)
    # gpsfake looks for the gpsd binary on PATH; Debian installs it in /usr/sbin.
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/usr/local/sbin"
    proc = subprocess.Popen(
        [gpsfake_bin, "-1", "-q", "-P", str(port), "-c", str(cycle), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
