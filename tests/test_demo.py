"""`make demo` must keep working: run it and check the story it tells."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sosbeacon.sim.drill_secrets import DrillSecrets
from tests.conftest import REPO
from tests.mqtt_env import need_mosquitto


def test_demo_runs_and_shows_what_the_contact_receives(tmp_path: Path) -> None:
    """The demo, with every secret configured; its story, then a scan of everything it
    said and wrote for those secrets."""
    need_mosquitto()
    workdir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "sosbeacon.sim.demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
        env={**os.environ, "SOSBEACON_DEMO_WORKDIR": str(workdir)},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for seen in (
        "BUTTON   held for 3.5 s",
        "WORLD    payloads sealed end to end",
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
    no_secret_in_what_the_run_said_or_wrote(workdir, res.stdout + res.stderr)


def no_secret_in_what_the_run_said_or_wrote(workdir: Path, said: str) -> None:
    """Issue 18: no key, passphrase or password in any log line, event, status output,
    export or message. Scanned: the demo's output, the daemon's log (debug level), the
    in-process relay's and tools' log (debug level), the daemon's event stream,
    ``sosctl status`` (text and JSON) and ``export``, the broker's log and persistence,
    the relay's and the device's databases: every file of the run but the ones that
    hold the secrets. And the broker held only sealed payloads."""
    secrets = DrillSecrets.load(workdir / "secrets")
    needles = secrets.needles()
    link_key = workdir / "relay" / "link.key"
    needles["relay link key"] = link_key.read_bytes()
    holders = set(secrets.files()) | {link_key}
    # the scan finds a secret where one is
    assert needles["key"] in secrets.key_file.read_bytes()
    assert needles["MQTT password of relay"] in secrets.password_file("relay").read_bytes()
    scanned = {"the demo's output": said.encode()}
    scanned |= {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
                if p.is_file() and p not in holders}  # fmt: skip
    for must in ("sosd.log", "demo.log", "events.jsonl", "outputs/sosctl-status.txt",
                 "outputs/sosctl-status-json.txt", "outputs/drill-beacon-export.json",
                 "broker/mosquitto.log", "broker/mosquitto.db", "data/outbox.db",
                 "relay/relay.db"):  # fmt: skip
        assert must in scanned, must
    leaks = [(name, where) for where, data in scanned.items()
             for name, needle in needles.items() if needle in data]  # fmt: skip
    assert leaks == []
    # what was scanned is the real run: the daemon logged at debug, the owner got a status
    assert b" DEBUG " in scanned["demo.log"] and b"sos " in scanned["outputs/sosctl-status.txt"]
    export = json.loads(scanned["outputs/drill-beacon-export.json"])
    lat = next(r["data"]["fix"]["lat"] for r in export["records"] if r["kind"] == "fix")
    assert f"{lat}".encode() in scanned["data/outbox.db"]  # the device keeps its route
    # and the broker carried no location and no record it could read
    for data in (scanned["broker/mosquitto.db"],):
        assert f"{lat}".encode() not in data and b'"kind"' not in data
