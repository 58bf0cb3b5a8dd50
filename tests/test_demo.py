"""`make demo` must keep working: run it and check the story it tells."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_shows_the_sos_story() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sim.demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "button released; SOS state: countdown" in out
    assert ">>> STORED sos-start [SOS]" in out
    # the start record carries the freshest fix and its age
    assert re.search(r"sos-start .* at 55\.\d+,-3\.\d+, fix \d+\.\d s old", out), out
    assert ">>> STORED sos-end: cli" in out
    assert out.index("sos-start") < out.index("sos-end")
    assert "Traceback" not in res.stderr
