"""Shared fixtures. Tests that need system tools (gpsd, gpsfake, mosquitto) skip with a
reason on a developer's machine but *fail* under CI (``CI=true``), so a broken CI image
can never turn into a silently green run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(what: str, ok: bool, install: str) -> None:
    if ok:
        return
    msg = f"{what} is missing: {install}"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``shared/`` beside the checkout (CI clones the repo with shared/ next to it)."""
    d = Path(os.environ.get("SOSBEACON_SHARED", REPO.parent / "shared"))
    require(
        f"shared data directory {d}",
        (d / "gpsd-logs").is_dir(),
        "set SOSBEACON_SHARED to the directory holding gpsd-logs/ and owntracks-schema/",
    )
    return d


@pytest.fixture(scope="session")
def gpsd_logs(shared_dir: Path) -> Path:
    return shared_dir / "gpsd-logs"


def pytest_sessionstart(session: pytest.Session) -> None:
    """``make timeshift`` runs part of the suite under libfaketime with the clock moved
    ahead; it says how far (``SOSBEACON_CLOCK_SHIFT_DAYS``) and what the real time was
    (``SOSBEACON_REAL_EPOCH``). A run whose clock did not move would prove nothing, so
    it stops at once instead of passing."""
    days = os.environ.get("SOSBEACON_CLOCK_SHIFT_DAYS")
    real = os.environ.get("SOSBEACON_REAL_EPOCH")
    if days is None or real is None:
        return
    import time

    moved = (time.time() - float(real)) / 86400
    if abs(moved - float(days)) > 1:
        pytest.exit(
            f"the clock was meant to be {days} days ahead but is {moved:.1f}: is libfaketime "
            "installed (Debian package faketime) and does LD_PRELOAD reach this process?",
            returncode=3,
        )


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    """A throwaway PostgreSQL server for the session (``initdb`` in a temp directory, a
    free port); each test takes a new database on it (``pg.new_db``)."""
    from sosbeacon.sim.postgres import find_bindir, postgres

    bindir = find_bindir()
    require("PostgreSQL (initdb, pg_ctl)", bindir is not None, "sudo apt-get install postgresql")
    assert bindir is not None
    with postgres(bindir) as server:
        yield server
