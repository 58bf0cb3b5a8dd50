"""Shared fixtures. Tests that need system tools (gpsd, gpsfake, mosquitto) skip with a
reason on a developer's machine but *fail* under CI (``CI=true``), so a broken CI image
can never turn into a silently green run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
