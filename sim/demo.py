"""``make demo``: the whole system, no hardware, in about 45 seconds.

It starts a throwaway Mosquitto, the contacts' relay (``sos-relay``, with a local mail
server standing in for the contacts' mailbox) and the real daemon (``sosd run --sim``: a
simulated GPS receiver on a pseudo-terminal walking round Arthur's Seat, a simulated
battery, a simulated button), holds the SOS button, and shows what happens on the device,
at the relay and for an emergency contact: the e-mail with her link, the page she opens,
the route growing, her "I'm on it" and the device's confirmation; then a tunnel and a
network outage (nothing is lost), and the SOS is stopped. It ends with the drill report
(``sim/scenarios/demo.toml``). From a terminal it then offers to keep the relay up, so
that the link can be opened in a browser, until Ctrl-C.

Every secret the system takes is configured, each made at random for the run: the
payloads are sealed end to end, OwnTracks' envelope is on, the broker and the mail
server ask for logins. ``SOSBEACON_DEMO_WORKDIR=DIR`` keeps the run's files there (the
logs, the outputs of ``sosctl status`` and ``export``): ``tests/test_demo.py`` scans
them for the secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

from sosbeacon.sim.broker import find_mosquitto
from sosbeacon.sim.drill import Drill, Report, Scenario, resolve

WHO = {
    "device": "DEVICE ",
    "button": "BUTTON ",
    "contact": "CONTACT",
    "world": "WORLD  ",
    "sosctl": "SOSCTL ",
    "relay": "RELAY  ",
}


def _color(who: str, text: str) -> str:
    if not sys.stdout.isatty():
        return text
    code = {
        "contact": "1;32", "device": "36", "world": "33", "button": "35", "sosctl": "35",
        "relay": "34",
    }  # fmt: skip
    return f"\033[{code.get(who, '0')}m{text}\033[0m"


def show(t: float, who: str, text: str) -> None:
    sys.stdout.write(f"  {t:5.1f}s  {_color(who, WHO.get(who, who))}  {text}\n")
    sys.stdout.flush()


async def main() -> int:
    w = sys.stdout.write
    if find_mosquitto() is None:
        sys.stderr.write("make demo needs Mosquitto: sudo apt-get install mosquitto\n")
        return 2
    scenario = Scenario.load(resolve("demo"))
    w(
        "sosbeacon demo: the real daemon on simulated hardware, a real MQTT broker, the\n"
        "contacts' relay, and an emergency contact (Alice). Lines marked CONTACT are what\n"
        "Alice receives and does; RELAY is the relay that e-mails her a link to a live page;\n"
        "DEVICE is the device itself; WORLD is what the demo does to it.\n\n"
    )
    keep = os.environ.get("SOSBEACON_DEMO_WORKDIR")
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = _kept(Path(keep))
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sos-demo-")))
        drill = Drill(scenario, workdir, on_event=show)
        if sys.stdin.isatty() and sys.stdout.isatty():
            drill.linger = lambda report: _linger(drill, report)
        report = await drill.run()
    if not drill.linger:
        _summary(drill, report)
    w(
        "\nEvery record carries a sequence number, so Alice's side can prove that nothing\n"
        "was lost (records lost: 0 above) even though the network went down mid-SOS.\n"
        "Next: `make test`, `sos-sim drill --list`, and docs/installation.md for a real Pi.\n"
    )
    return 0 if report.passed else 1


def _kept(workdir: Path) -> Path:
    """``workdir``, kept after the run, with the in-process parts' log (the relay, the
    contact's tools) at debug level in ``demo.log`` (the tests scan it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    return workdir


def _summary(drill: Drill, report: Report) -> None:
    w = sys.stdout.write
    w("\n" + report.text())
    if drill.mail is not None:
        w("\nThe e-mail Alice received (at the demo's local mail server):\n")
        w(f"  To: {', '.join(drill.mail.to)}\n  Subject: {drill.mail.subject}\n\n")
        w("".join(f"  {line}\n" for line in drill.mail.body.splitlines()))
    if drill.link:
        w(f"\nHer link: {drill.link}\n")


async def _linger(drill: Drill, report: Report) -> None:
    """From a terminal: keep the relay and its page up until Ctrl-C."""
    _summary(drill, report)
    sys.stdout.write(
        "\nKeep the relay running so you can open the link in a browser on this machine? [y/N] "
    )
    sys.stdout.flush()
    answer = await asyncio.to_thread(sys.stdin.readline)
    if answer.strip().lower() not in ("y", "yes"):
        return
    sys.stdout.write(f"Serving {drill.link} (the route stays; the SOS has ended). Ctrl-C stops.\n")
    sys.stdout.flush()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
