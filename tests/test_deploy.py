"""The shipped systemd unit is valid and asks for what the daemon does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "deploy" / "sosbeacon.service"


def test_unit_declares_notify_watchdog_and_an_unprivileged_user() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "User=sosbeacon",
        "SupplementaryGroups=dialout gpio i2c",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=sosbeacon",
    ):
        assert line in text, line
    # the daemon's default data directory is the unit's state directory
    from sosbeacon.device.config import DeviceSettings

    assert DeviceSettings().data_dir == Path("/var/lib/sosbeacon")


def verify_unit(tmp_path: Path, unit_file: Path, program: str) -> None:
    """``systemd-analyze verify`` accepts the unit (its program replaced by /bin/true)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    unit = tmp_path / unit_file.name
    unit.write_text(
        unit_file.read_text().replace(f"/opt/sosbeacon/.venv/bin/{program}", "/bin/true")
    )
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and unit_file.name not in res.stderr, res.stderr


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    verify_unit(tmp_path, UNIT, "sosd")


RELAY_UNIT = REPO / "deploy" / "sos-relay.service"


def test_the_relay_unit_runs_unprivileged_with_its_own_state(tmp_path: Path) -> None:
    text = RELAY_UNIT.read_text()
    for line in (
        "User=sos-relay",
        "StateDirectory=sos-relay",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "sos-relay --config /etc/sosbeacon/sos-relay.toml run",
    ):
        assert line in text, line
    from sosbeacon.relay.config import RelaySettings

    assert RelaySettings().data_dir == Path("/var/lib/sos-relay")
    verify_unit(tmp_path, RELAY_UNIT, "sos-relay")
