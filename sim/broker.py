"""A throwaway Mosquitto for tests and drills: a free loopback port, a config of the
caller's choosing, and the ability to kill -9 and restart it on the same port.

Never the system's service: each instance has its own directory, config, persistence
file and log, and is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin"):
        p = Path(d) / "mosquitto"
        if p.exists():
            return str(p)
    return None


_handed_out: set[int] = set()


@functools.cache
def _outside_ephemeral() -> list[tuple[int, int]]:
    """The port ranges (of 1,000 ports or more) that the kernel never hands to an
    outgoing connection; read once per process."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        low, high = int(text[0]), int(text[1])
    except (OSError, ValueError, IndexError):
        low, high = 32768, 60999
    return [r for r in ((10000, low - 1), (high + 1, 65535)) if r[1] - r[0] >= 1000]


def free_port() -> int:
    """A loopback port nobody holds now, for a server started soon after.

    Not from the kernel's ephemeral range: there, any outgoing connection (a client's
    own end) may take the port between this call and the server's bind, which is how a
    relay once found its page's port "already in use". Never the same port twice in one
    process, so two servers of one test cannot be handed one port."""
    ranges = _outside_ephemeral()
    for _ in range(200):
        # with no room outside the ephemeral range, the kernel's choice (port 0)
        port = random.randint(*random.choice(ranges)) if ranges else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free loopback port found in 200 tries")


class Mosquitto:
    def __init__(
        self,
        workdir: Path | str,
        *,
        port: int | None = None,
        config: str = "",
        binary: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra_config = config
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed: sudo apt-get install mosquitto")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        extra = self.extra_config
        listener = "" if "listener " in extra else f"listener {self.port} 127.0.0.1\n"
        anon = "" if "allow_anonymous" in extra else "allow_anonymous true\n"
        # Nagle's algorithm on the broker's sockets held the first SOS after a start
        # for a delayed ACK, 40 ms; docs/configuration.md recommends this for any broker
        nodelay = "" if "set_tcp_nodelay" in extra else "set_tcp_nodelay true\n"
        # Run as whoever started us: as root, Mosquitto would otherwise switch to the
        # "mosquitto" user, which cannot write the log and persistence file here.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        conf.write_text(
            user
            + listener
            + anon
            + nodelay
            + f"persistence true\npersistence_location {self.workdir}/\n"
            + f"log_dest file {self.log}\nlog_type all\n"
            + extra
            + "\n"
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        assert self.binary is not None
        conf = self._write_config()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited at start ({self.proc.returncode}): "
                    f"{err.strip()} — see {self.log}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        """kill -9: no goodbye, no final persistence save."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()

    def reload(self, config: str | None = None) -> None:
        """Rewrite the config (if given) and SIGHUP: Mosquitto re-reads its ACL and
        password files without dropping anyone."""
        if config is not None:
            self.extra_config = config
        self._write_config()
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGHUP)

    def add_user(self, user: str, password: str) -> Path:
        """Add ``user`` to ``passwd`` in the broker's directory (``mosquitto_passwd``);
        returns the file, for ``password_file`` in the config."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "passwd"
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise FileNotFoundError("mosquitto_passwd is missing: sudo apt-get install mosquitto")
        if not path.exists():
            path.touch(0o600)
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
        return path

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
