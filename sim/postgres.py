"""A throwaway PostgreSQL for tests and benchmarks: ``initdb`` in a temp directory, the
server on a free loopback port, stopped and deleted afterwards. Never the system's
cluster.

PostgreSQL refuses to run as root, so as root the directory is given to the
``postgres`` user (Debian's package creates it) and every command runs through
``runuser -u postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sosbeacon.sim.broker import free_port


def find_bindir() -> Path | None:
    """Debian keeps the server's programs in /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # a link on PATH: the directory it points into
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


class Postgres:
    def __init__(self, bindir: Path, *, user: str = "sosrelay", db: str = "sosrelay") -> None:
        self.bindir = bindir
        self.user, self.db = user, db
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sos-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, and there is no postgres user to run PostgreSQL as: "
                    "sudo apt-get install postgresql"
                ) from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return self.url_of(self.db)

    def url_of(self, db: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_db(self, name: str) -> str:
        """A new, empty database on this server; returns its URL."""
        self._createdb(name)
        return self.url_of(name)

    def _createdb(self, name: str) -> None:
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", self.user, name,
        )  # fmt: skip

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        b = self.bindir
        self._run(
            str(b / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.dir} -c fsync=on -c max_connections=200"
        )
        self._run(
            str(b / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
            "-t", "60", "-o", opts, "start",
        )  # fmt: skip
        self._createdb(self.db)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres(bindir: Path) -> Iterator[Postgres]:
    pg = Postgres(bindir)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
