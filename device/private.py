"""Files only their owner may read: what the device keeps at rest.

* The data directory is 0710: the daemon's user reads and writes it; its group may only
  pass through it to the control socket (``sosd.sock``, 0660, the way ``sosctl`` talks to
  the daemon), never list it or open anything else in it.
* The outbox (its WAL and shared-memory files take the database file's mode: SQLite
  copies it), the session mark and exports are 0600.

Modes are set on the descriptor or the path, never through the process umask (which an
``await`` could leak to the rest of the daemon).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o710
FILE_MODE = 0o600


def private_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Make ``path`` (and missing parents) and tighten it to ``mode``."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & ~mode:
        os.chmod(path, mode)


def private_file(path: Path) -> None:
    """Create ``path`` empty if missing, and tighten it to :data:`FILE_MODE`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def private_db(path: Path) -> None:
    """An SQLite database file 0600 before SQLite opens it (a new WAL or shared-memory
    file takes its mode), and those two tightened too when an earlier run left them."""
    private_file(path)
    for side in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            other = path.with_name(path.name + side)
            if stat.S_IMODE(other.stat().st_mode) & ~FILE_MODE:
                os.chmod(other, FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
    finally:
        os.close(fd)
