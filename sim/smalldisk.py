"""A small file system to fill up: a tmpfs of a few megabytes mounted for a test or a
fault campaign (root is needed to mount it), and a filler that takes its last byte."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


def can_mount() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2M") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``where`` while the block runs (lazily unmounted after)."""
    if not can_mount():
        raise PermissionError(
            "mounting a small tmpfs needs root: run this as root (e.g. sudo make soak)"
        )
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system to its last byte; returns the filler (delete it to free)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler
