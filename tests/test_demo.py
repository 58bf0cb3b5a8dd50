"""`make demo` must keep working: run it and check the story it tells."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from tests.mqtt_env import need_mosquitto


def test_demo_runs_and_shows_what_the_contact_receives() -> None:
    need_mosquitto()
    res = subprocess.run(
        [sys.executable, "-m", "sim.demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for seen in (
        "BUTTON   held for 3.5 s",
        "DEVICE   countdown beeping",
        "CONTACT  SOS STARTED at 55.",
        "CONTACT  route point",
        "CONTACT  SOS acknowledged by Alice",
        "WORLD    network down",
        "DEVICE   link lost",
        "CONTACT  SOS ENDED (cli)",
        "records lost",
        "RESULT: PASSED",
    ):
        assert seen in out, (seen, out)
    assert out.index("SOS STARTED") < out.index("SOS ENDED")
    assert "Traceback" not in res.stderr
