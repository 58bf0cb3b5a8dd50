"""`make demo` must keep working: run it and check the story it tells."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO
from tests.mqtt_env import need_mosquitto


def test_demo_runs_and_shows_what_the_contact_receives() -> None:
    need_mosquitto()
    res = subprocess.run(
        [sys.executable, "-m", "sosbeacon.sim.demo"],
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
        "RELAY    stored the SOS",
        "DEVICE   recording a voice note",
        "DEVICE   voice note stored: 8.0 s",
        "RELAY    has the voice note whole",
        "CONTACT  e-mail to alice@example.org: 'SOS: voice note from Sam'",
        "CONTACT  e-mail to alice@example.org: 'SOS: Sam needs help'",
        "CONTACT  opened the page (HTTP 200)",
        'CONTACT  Alice presses "I\'m on it" on the page',
        "RELAY    the device confirmed the acknowledgement",
        "CONTACT  SOS acknowledged by Alice",
        "WORLD    network down",
        "DEVICE   link lost",
        "CONTACT  SOS ENDED (cli)",
        "records lost",
        "RESULT: PASSED",
    ):
        assert seen in out, (seen, out)
    assert out.index("SOS STARTED") < out.index("SOS ENDED")
    # the e-mail is printed whole, with the link to open
    link = re.search(r"Her link: (http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_-]{32})", out)
    assert link and f"Live route: {link.group(1)}" in out
    # the relay's timings are measured, not left blank
    for figure in (
        "relay stored the SOS (s after the gesture)",
        "contact notified by e-mail (s after the gesture)",
        "link opened (s after the e-mail)",
        "ack from the page to the device's confirmation on it (s)",
        "gesture/command to the voice note whole at the relay (s)",
    ):
        value = re.search(re.escape(figure) + r"\s+(\S+)", out)
        assert value and re.fullmatch(r"\d+\.\d+", value.group(1)), (figure, out)
    assert "Traceback" not in res.stderr
