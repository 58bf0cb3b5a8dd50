"""SOS drills: a scenario (a timeline of things that happen, plus expectations) run
against the real daemon — ``sosd run --sim`` as its own process — with simulated
hardware, a real Mosquitto, and a fault proxy on the device's link; the contacts' side
is a :class:`sim.receiver.Receiver`. The result is a report with figures.

Scenario files are TOML (``sim/scenarios/*.toml``, documented in ``docs/drills.md``)::

    name = "tunnel"
    description = "..."
    time_scale = 1          # the daemon's timers run this much faster
    timeout = 120           # real seconds the whole drill may take
    [config]                # dotted overrides of the daemon's configuration
    "sos.countdown" = 2
    [[step]]
    at = 5                  # seconds (of the daemon's time) after the daemon is ready
    do = "press"            # see ACTIONS
    value = "long"
    [expect]
    records_lost = 0
    sos_delivered_within = 10
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import statistics
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sosbeacon.device.cli import sosctl_command
from sosbeacon.device.control import NotRunning, follow, request
from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.mqtt import BrokerConfig, Connection, MqttError
from sosbeacon.device.wire import Received, Topics, dumps, owntracks_key, seal
from sosbeacon.relay.notify import message_kind
from sosbeacon.sim import localrelay
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.button import multi_press
from sosbeacon.sim.contact_page import PageVisitor
from sosbeacon.sim.drill_secrets import DrillSecrets
from sosbeacon.sim.mailsink import Mail, MailSink
from sosbeacon.sim.netfault import FaultProxy, LinkMode
from sosbeacon.sim.receiver import Receiver
from sosbeacon.sim.relay_process import toml_text
from sosbeacon.sim.sosd_process import kill_sosd, start_sosd, stop_sosd

log = logging.getLogger(__name__)
SCENARIOS = Path(__file__).parent / "scenarios"
DEVICE = "drill-beacon"
#: Alice's phone (the simulated network carries her texts)
ALICE_PHONE = "+447700900123"

#: what a step can do, and what its value means
ACTIONS = {
    "press": "the SOS button: long | multi | short",
    "sos-start": "sosctl sos start --now (value 'drill' for a drill)",
    "sos-stop": "sosctl sos stop",
    "ack": "a contact acknowledges the SOS over MQTT (value: the contact's name)",
    "ack-page": 'Alice presses "I\'m on it" on the page her e-mail links to',
    "cancel": "a contact cancels the SOS over MQTT",
    "gps-lost": "the receiver loses its fix (a tunnel)",
    "gps-back": "the fix returns",
    "battery": "set the cell: a percentage, or plug / unplug",
    "network": "the device's link: down | blackhole | slow | up",
    "sms-reply": "Alice answers the device's text from her phone (value: the text, OK)",
    "broker-restart": "kill -9 the broker and start it again",
    "daemon-kill": "SIGKILL the daemon and start it again",
}
#: how long after a press starts its gesture is complete (the detector fires)
GESTURE_AT = {"long": 3.0, "multi": sum(h + g for h, g in multi_press(5)[:-1]) + 0.15}
EXPECTATIONS = {
    "records_lost": "at most this many records missing at the contact (0)",
    "sos_started": "whether an SOS (or drill) reached the contact",
    "drill": "whether what reached the contact was flagged a drill",
    "sos_delivered_within": "seconds from gesture (or command) to the contact, countdown included",
    "ack_within": "seconds from a contact's ack to the device's acknowledgement reaching them",
    "max_route_gap": "seconds between consecutive route points, at most",
    "caught_up_within": "seconds from the network's return to the contact having everything",
    "first_sms_within": "seconds from gesture (or command) to the first text to a contact",
    "sms_reply_confirmed_within": "seconds from a contact's SMS reply to the device's answer",
    "link_sent": "whether the relay's message with her share link reached Alice",
    "alerts_after_ack": "SOS alerts the relay sent Alice after she acknowledged by SMS (0)",
    "first_fix_within": "seconds from daemon start to its first fix",
    "final_state": "the daemon's SOS state at the end: idle | active",
}


class ScenarioError(SosbeaconError, ValueError):
    pass


@dataclass(frozen=True)
class Step:
    at: float
    do: str
    value: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    config: dict[str, Any] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    time_scale: float = 1.0
    timeout: float = 180.0
    #: seconds (daemon time) to keep running after the last step
    settle: float = 5.0
    #: Alice can be texted (her phone in her reach): the drills of SMS
    phone: bool = False
    #: every secret configured (sim.drill_secrets): sealed topics, OwnTracks'
    #: envelope, MQTT and SMTP logins; the run's logs and outputs are kept to be scanned
    secrets: bool = False

    @classmethod
    def load(cls, path: Path) -> Scenario:
        try:
            t = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"{path}: {exc}") from None
        problems: list[str] = []
        known = {"name", "description", "step", "config", "expect", "time_scale", "timeout"}
        known |= {"settle", "phone", "secrets"}
        problems += [f"unknown key {k!r}" for k in t if k not in known]
        steps = []
        for i, s in enumerate(t.get("step", [])):
            if s.get("do") not in ACTIONS:
                problems.append(f"step[{i}].do: {s.get('do')!r} is not one of {', '.join(ACTIONS)}")
                continue
            if not isinstance(s.get("at"), int | float) or s["at"] < 0:
                problems.append(f"step[{i}].at: seconds after start, a number >= 0")
                continue
            extra = set(s) - {"at", "do", "value"}
            if extra:
                problems.append(f"step[{i}]: unknown key(s) {sorted(extra)}")
            steps.append(Step(float(s["at"]), s["do"], str(s.get("value", ""))))
        expect = t.get("expect", {})
        problems += [
            f"expect.{k}: unknown; known: {', '.join(EXPECTATIONS)}"
            for k in expect
            if k not in EXPECTATIONS
        ]
        if problems:
            raise ScenarioError(f"{path}:\n  " + "\n  ".join(problems))
        return cls(
            name=str(t.get("name", path.stem)),
            description=str(t.get("description", "")),
            steps=tuple(sorted(steps, key=lambda s: s.at)),
            config=dict(t.get("config", {})),
            expect=dict(expect),
            time_scale=float(t.get("time_scale", 1.0)),
            timeout=float(t.get("timeout", 180.0)),
            settle=float(t.get("settle", 5.0)),
            phone=bool(t.get("phone", False)),
            secrets=bool(t.get("secrets", False)),
        )


@dataclass
class Report:
    scenario: str
    description: str
    time_scale: float
    figures: dict[str, Any]
    checks: list[dict[str, Any]]
    events: list[str]

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def text(self) -> str:
        lines = [f"Drill report: {self.scenario}", f"  {self.description}".rstrip(), ""]
        width = max(len(k) for k in self.figures)
        for key, value in self.figures.items():
            shown = "—" if value is None else value
            lines.append(f"  {key:<{width}}  {shown}")
        if self.checks:
            lines.append("")
            lines.append("Expectations")
            for c in self.checks:
                mark = "PASS" if c["ok"] else "FAIL"
                lines.append(f"  [{mark}] {c['what']}: expected {c['expected']}, got {c['got']}")
        lines.append("")
        lines.append("RESULT: " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2, default=str)


class Drill:
    """Runs one scenario. ``on_event`` gets a line for everything that happens (the
    demo prints them as the contacts' view)."""

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        *,
        on_event: Callable[[float, str, str], None] | None = None,
        mosquitto: str | None = None,
    ) -> None:
        self.s = scenario
        self.workdir = workdir
        self.on_event = on_event
        self.mosquitto = mosquitto
        self.topics = Topics.for_device(DEVICE)
        self.data = workdir / "data"
        self.sock = self.data / "sosd.sock"
        self.t0 = 0.0
        self.events: list[str] = []
        self.marks: dict[str, list[float]] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.logfile = workdir / "sosd.log"
        self.receiver: Receiver | None = None
        #: the relay's first e-mail to Alice (every one, in order), and her view of the
        #: page it links to
        self.mail: Mail | None = None
        self.mails: list[tuple[float, Mail]] = []
        self.link: str | None = None
        self.visitor: PageVisitor | None = None
        self.relay_url: str | None = None
        self.secrets: DrillSecrets | None = None
        #: called with the report before the relay and broker stop (the demo keeps
        #: serving the page there until Ctrl-C)
        self.linger: Callable[[Report], Awaitable[None]] | None = None

    # -- timeline helpers --------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the daemon was ready, in the daemon's (scaled) time."""
        return (time.monotonic() - self.t0) * self.s.time_scale

    def event(self, who: str, text: str) -> None:
        t = self.now() if self.t0 else 0.0
        self.events.append(f"{t:7.1f}s  {who:8} {text}")
        if self.on_event is not None:
            self.on_event(t, who, text)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, []).append(self.now())

    # -- running -----------------------------------------------------------------------

    async def run(self) -> Report:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = "max_queued_messages 0\nautosave_interval 1\nautosave_on_changes true\n"
        broker = Mosquitto(self.workdir / "broker", config=config, binary=self.mosquitto)
        relay_settings: dict[str, Any] = {}
        login: tuple[str, str] | None = None
        if self.s.secrets:
            sec = self.secrets = DrillSecrets.make(self.workdir / "secrets", DEVICE)
            for user, password in sec.mqtt_passwords.items():
                passwd = broker.add_user(user, password)
            broker.extra_config += f"allow_anonymous false\npassword_file {passwd}\n"
            relay_settings = {
                "mqtt.username": "relay",
                "mqtt.password_file": str(sec.password_file("relay")),
                "relay.keys_dir": str(sec.keys_dir),
            }
            login = (sec.smtp_user, sec.smtp_password)
        broker.start()
        try:
            with MailSink(login) as sink:
                relay_settings["notify.services"] = {"email": sink.url()}
                cfg = localrelay.settings(self.workdir, broker.port, **relay_settings)
                async with (
                    localrelay.running(cfg) as relay,
                    FaultProxy(target_port=broker.port) as proxy,
                ):
                    self.relay_url = cfg.relay.public_url
                    relay.observers.append(self._relay_event)
                    mailer = asyncio.create_task(self._follow_mail(sink))
                    try:
                        report = await asyncio.wait_for(self._run(broker, proxy), self.s.timeout)
                    finally:
                        mailer.cancel()
                        if self.visitor is not None:
                            await self.visitor.close()
                    if self.linger is not None:
                        await self._stop_daemon()
                        await self.linger(report)
                    return report
        finally:
            await self._stop_daemon()
            broker.stop()

    def _relay_event(self, what: str, details: dict[str, Any]) -> None:
        if what == "sos-stored":
            self.mark("relay-stored")
            self.event("relay", "stored the SOS; e-mailing the contacts their links")
        elif what == "opened":
            self.mark("opened")
            self.event("relay", f"{details['name']} opened the page")
        elif what == "voice-stored":
            self.mark("voice")
            self.event("relay", "has the voice note whole (hash checked); it plays on the page")
        elif what == "ack-confirmed":
            self.mark("page-confirmed")
            self.event("relay", "the device confirmed the acknowledgement; the page shows it")

    async def _follow_mail(self, sink: MailSink) -> None:
        """Alice's mailbox: the relay's e-mails; the first one's link she opens at once."""
        while True:
            mail = (await sink.wait(len(self.mails) + 1, within=3600))[-1]
            self.mails.append((self.now(), mail))
            self.event("contact", f"e-mail to {', '.join(mail.to)}: {mail.subject!r}")
            if self.mail is None:
                self.mail = mail
                self.mark("notified")
                await self._open_link(mail)

    async def _open_link(self, mail: Mail) -> None:
        found = re.search(r"https?://\S+/s/[A-Za-z0-9_-]+", mail.body)
        if found is None:
            self.event("contact", "the e-mail has no link")
            return
        self.link = found.group(0)
        self.event("contact", f"link in it: {self.link}")
        self.visitor = PageVisitor(self.link)
        status = await self.visitor.open()
        self.event("contact", f"opened the page (HTTP {status})")

    async def _run(self, broker: Mosquitto, proxy: FaultProxy) -> Report:
        conf = self._write_config(proxy.port)
        sec = self.secrets
        rx = Receiver(
            self._login(BrokerConfig(host="127.0.0.1", port=broker.port, client_id="contact")),
            self.topics,
            owntracks_topic=f"owntracks/sosbeacon/{DEVICE}",
            key=sec.key if sec else None,
            owntracks_key=owntracks_key(sec.owntracks_passphrase) if sec else None,
        )
        self.receiver = rx
        await rx.start()
        watcher = asyncio.create_task(self._watch(rx))
        follower = asyncio.create_task(self._follow_events())
        contact = Connection(
            self._login(BrokerConfig(host="127.0.0.1", port=broker.port, client_id="alice"))
        )
        await contact.connect()
        await contact.subscribe(f"{self.topics.base}/reply/#")
        started = time.monotonic()
        await self._start_daemon(conf)
        self.t0 = time.monotonic()
        self.event("device", f"sosd running (started in {self.t0 - started:.1f} s)")
        if sec is not None:
            self.event(
                "world",
                "payloads sealed end to end (the broker cannot read them), OwnTracks' "
                "own envelope, MQTT and SMTP logins",
            )
        for step in self.s.steps:
            delay = step.at / self.s.time_scale - (time.monotonic() - self.t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await self._do(step, broker, proxy, contact, conf)
        await asyncio.sleep(self.s.settle / self.s.time_scale)
        final = await self._status()
        # everything the device stored reaches the contact before the report
        await self._drain(rx)
        if sec is not None:
            await self._keep_outputs()
        watcher.cancel()
        follower.cancel()
        contact.close()
        await rx.close()
        return self._report(rx, final)

    def _write_config(self, port: int) -> Path:
        lines = [
            "[device]",
            f'id = "{DEVICE}"',
            f'data_dir = "{self.data}"',
            "[[sos.contacts]]",
            'name = "Alice"',
            f'reach = "alice@example.org{", " + ALICE_PHONE if self.s.phone else ""}"',
            "[mqtt]",
            f'broker = "mqtt://127.0.0.1:{port}"',
            "keepalive = 5",
            "connect_timeout = 5",
        ]
        overrides = {"sos.owner": "Sam", **self._sealing(), **self.s.config}
        # the scenario's [mqtt] keys join the table above, before any other table
        mqtt = {k: v for k, v in overrides.items() if k.rpartition(".")[0] == "mqtt"}
        lines += [f"{k.rpartition('.')[2]} = {json.dumps(v)}" for k, v in mqtt.items()]
        rest = {k: v for k, v in overrides.items() if k not in mqtt}
        text = "\n".join(lines) + "\n" + toml_text(rest)
        conf = self.workdir / "sosbeacon.toml"
        conf.write_text(text)
        return conf

    def _sealing(self) -> dict[str, Any]:
        """The device's end of the secrets: its broker login, its key and the OwnTracks
        passphrase."""
        if self.secrets is None:
            return {}
        return {
            "mqtt.username": "beacon",
            "mqtt.password_file": str(self.secrets.password_file("beacon")),
            "uplink.key_file": str(self.secrets.key_file),
            "uplink.owntracks_passphrase_file": str(self.secrets.owntracks_file),
        }

    def _login(self, broker: BrokerConfig) -> BrokerConfig:
        """``broker`` with the password of its client id, when the drill has logins."""
        if self.secrets is None:
            return broker
        user = broker.client_id
        return replace(broker, username=user, password=self.secrets.mqtt_passwords[user])

    def _command(self, payload: dict[str, Any]) -> bytes:
        """A contact's command as the device takes it: sealed when the topics are."""
        raw = dumps(payload)
        return seal(self.secrets.key, raw) if self.secrets is not None else raw

    async def _keep_outputs(self) -> None:
        """``sosctl status`` and ``sosctl export`` run as the owner would, their output
        kept in the work directory (for the scan of a run's outputs for its secrets)."""
        out = self.workdir / "outputs"
        out.mkdir(exist_ok=True)
        for name, args in (
            ("status", ["status"]),
            ("status-json", ["--json", "status"]),
            ("export", ["export", "--out", str(out)]),
        ):
            proc = await asyncio.create_subprocess_exec(
                *sosctl_command("--data-dir", str(self.data), *args),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            said, _ = await proc.communicate()
            (out / f"sosctl-{name}.txt").write_bytes(said)

    async def _start_daemon(self, conf: Path) -> None:
        # with secrets, every debug line too: the scan for them reads the daemon's log
        level = ["--log-level", "debug"] if self.secrets is not None else []
        self.proc = await start_sosd(
            conf, self.sock, self.logfile, "--time-scale", str(self.s.time_scale), *level
        )

    async def _stop_daemon(self) -> None:
        if self.proc is not None:
            await stop_sosd(self.proc)

    async def _status(self) -> dict[str, Any]:
        try:
            return await request(self.sock, {"cmd": "status"})
        except NotRunning:
            return {}

    async def _ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        answer = await request(self.sock, req)
        if not answer.get("ok"):
            self.event("sosctl", f"refused: {answer.get('error')}")
        return answer

    async def _do(
        self,
        step: Step,
        broker: Mosquitto,
        proxy: FaultProxy,
        contact: Connection,
        conf: Path,
    ) -> None:
        v = step.value
        if step.do == "press":
            self.event(
                "button",
                {
                    "long": "held for 3.5 s",
                    "multi": "pressed 5 times",
                    "short": "pressed once, briefly",
                }.get(v, v),
            )
            if v in GESTURE_AT:
                self.marks.setdefault("trigger", []).append(self.now() + GESTURE_AT[v])
            await self._ctl({"cmd": "sim.press", "value": v})
        elif step.do == "sos-start":
            self.event("sosctl", "sos start --now" + (" --drill" if v == "drill" else ""))
            self.mark("trigger")
            await self._ctl({"cmd": "sos-start", "now": True, "drill": v == "drill"})
        elif step.do == "sos-stop":
            self.event("sosctl", "sos stop")
            self.mark("stop")
            await self._ctl({"cmd": "sos-stop"})
        elif step.do in ("ack", "cancel"):
            name = v or "Alice"
            self.event("contact", f"{name} sends {step.do}")
            self.mark(step.do)
            payload = {"cmd": step.do, "by": name, "id": f"{step.do}-{len(self.events)}"}
            with contextlib.suppress(MqttError):
                await contact.publish(
                    self.topics.cmd,
                    self._command(payload),
                    response_topic=f"{self.topics.base}/reply/{name}",
                    correlation=payload["id"].encode(),
                )
        elif step.do == "ack-page":
            self.event("contact", 'Alice presses "I\'m on it" on the page')
            self.mark("ack")
            self.mark("ack-page")
            if self.visitor is None:
                self.event("contact", "no page open: no e-mail with a link arrived")
            else:
                answer = await self.visitor.ack()
                if not answer.get("ok"):
                    self.event("contact", f"the page says: {answer.get('error')}")
        elif step.do == "sms-reply":
            self.event("contact", f"Alice texts back {v or 'OK'!r}")
            self.mark("sms-reply")
            await self._ctl({"cmd": "sim.sms-from", "value": f"{ALICE_PHONE} {v or 'OK'}"})
        elif step.do == "gps-lost":
            self.event("world", "GPS fix lost (tunnel)")
            await self._ctl({"cmd": "sim.gps", "value": "lost"})
        elif step.do == "gps-back":
            self.event("world", "GPS fix back")
            await self._ctl({"cmd": "sim.gps", "value": "back"})
        elif step.do == "battery":
            self.event("world", f"battery {v}")
            await self._ctl({"cmd": "sim.battery", "value": v})
        elif step.do == "network":
            self.event("world", f"network {v}")
            if v == "down":
                proxy.set(LinkMode.REFUSE)
                await self._ctl({"cmd": "sim.network", "value": "down"})
            elif v == "blackhole":
                proxy.set(LinkMode.BLACKHOLE)
            elif v == "slow":
                proxy.set(LinkMode.PASS)
                proxy.latency, proxy.bandwidth = 0.5, 2000
            else:
                proxy.set(LinkMode.PASS)
                proxy.latency, proxy.bandwidth = 0.0, None
                self.mark("network-up")
                await self._ctl({"cmd": "sim.network", "value": "up"})
        elif step.do == "broker-restart":
            self.event("world", "broker killed (kill -9) and restarted")
            await asyncio.to_thread(broker.restart)
        elif step.do == "daemon-kill":
            self.event("world", "sosd killed (SIGKILL) and restarted")
            assert self.proc is not None
            await kill_sosd(self.proc)
            await self._start_daemon(conf)

    async def _watch(self, rx: Receiver) -> None:
        """Turn what the contact receives into events, as it arrives."""
        seen = [0]
        shown: set[tuple[str, int]] = set()
        while True:
            await rx.wait_until(lambda: len(rx.records) > seen[0], within=3600)
            for r in rx.records[seen[0] :]:
                if (r.box, r.seq) not in shown:  # a resend or a retained replay: once
                    shown.add((r.box, r.seq))
                    self._contact_event(r)
            seen[0] = len(rx.records)
            ups = self.marks.get("network-up", [])
            done = self.marks.get("caught-up", [])
            if ups and len(done) < len(ups) and not rx.ledger().missing():
                self.mark("caught-up")  # everything stored so far has arrived

    async def _follow_events(self) -> None:
        """The daemon's own view, from its event stream (``sosctl events``): cues, link
        changes, resumptions. Across a restart it asks for what happened since the last
        event it saw, so a resumption before the control socket was up is not missed."""
        since = 0.0
        while True:
            try:
                async for ev in follow(self.sock, {"cmd": "events", "since": since}):
                    if "kind" in ev:
                        with (self.workdir / "events.jsonl").open("a") as kept:
                            kept.write(json.dumps(ev) + "\n")
                        since = max(since, ev["t"])
                        if ev["kind"] == "sms":
                            self.mark("sms")
                        elif ev["kind"] == "sos" and str(ev.get("by", "")).endswith("(SMS)"):
                            self.mark("sms-acked")  # acknowledged, by a reply
                        shown = device_line(ev)
                        if shown:
                            self.event("device", shown)
            except (NotRunning, ConnectionError, OSError, ValueError):
                pass
            await asyncio.sleep(0.1)  # the daemon is (re)starting

    def _contact_event(self, r: Received) -> None:
        tag = "DRILL" if r.drill else "SOS"
        d = r.data
        if r.kind == "sos-start":
            self.mark("delivered")
            fix = d.get("fix")
            where = (
                f"at {fix['lat']:.5f}, {fix['lon']:.5f} (fix {d.get('fix_age')} s old)"
                if fix
                else d.get("fix_note", "no fix yet")
            )
            self.event("contact", f"{tag} STARTED {where}; trigger {d.get('trigger')}")
        elif r.kind == "fix":
            self.mark("route")
            f = d["fix"]
            self.event("contact", f"route point {f['lat']:.5f}, {f['lon']:.5f}")
        elif r.kind == "battery":
            b = d["battery"]
            self.event("contact", f"battery {b.get('pct')}% {b.get('status', '')}")
        elif r.kind == "sos-ack":
            self.mark("acked")
            self.event("contact", f"{tag} acknowledged by {d.get('by')} (device confirms)")
        elif r.kind == "sos-end":
            self.event("contact", f"{tag} ENDED ({d.get('reason')}); route kept 72 h")
        elif r.kind == "last-gasp":
            self.event("contact", f"LAST GASP: {d.get('reason')}")
        elif r.kind == "gap":
            self.event("contact", f"records removed on the device ({d.get('reason')})")

    async def _drain(self, rx: Receiver) -> None:
        st = await self._status()
        deadline = time.monotonic() + 60
        while st and st["outbox"]["depth"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            st = await self._status()
        exported = await request(self.sock, {"cmd": "export"}) if st else {"records": []}
        stored = [r["seq"] for r in exported.get("records", [])]
        if stored:
            with contextlib.suppress(TimeoutError):
                await rx.wait_for_seqs(max(stored), within=30)
        self.mark("drained")

    # -- the report --------------------------------------------------------------------

    def _report(self, rx: Receiver, final: dict[str, Any]) -> Report:
        led = rx.ledger()
        recs = sorted({r.seq: r for r in rx.records}.values(), key=lambda r: r.seq)
        starts = [r for r in recs if r.kind == "sos-start"]
        route = sorted(r.t for r in recs if r.kind == "fix" and r.session)
        gaps = [b - a for a, b in itertools.pairwise(route)]
        trig = self.marks.get("trigger", [])
        delivered = self.marks.get("delivered", [])
        latency = None
        if trig and delivered and delivered[0] >= trig[0]:
            latency = round(delivered[0] - trig[0], 2)
        ack_latency = None
        if self.marks.get("ack") and self.marks.get("acked"):
            ack_latency = round(self.marks["acked"][0] - self.marks["ack"][0], 2)
        drain = None
        ups, caught = self.marks.get("network-up", []), self.marks.get("caught-up", [])
        if ups and caught:
            drain = round(caught[-1] - ups[-1], 2)
        figures: dict[str, Any] = {
            "time scale": self.s.time_scale,
            "time to first fix (s)": final.get("first_fix_after"),
            "gesture/command to SOS at the contact (s, countdown included)": latency,
            "contact ack to device confirmation (s)": ack_latency,
            "relay stored the SOS (s after the gesture)": _since(trig, "relay-stored", self.marks),
            "contact notified by e-mail (s after the gesture)": _since(
                trig, "notified", self.marks
            ),
            "link opened (s after the e-mail)": _since(
                self.marks.get("notified", []), "opened", self.marks
            ),
            "ack from the page to the device's confirmation on it (s)": _since(
                self.marks.get("ack-page", []), "page-confirmed", self.marks
            ),
            "route points received": len(route),
            "longest gap between route points (s)": round(max(gaps), 1) if gaps else None,
            "median gap between route points (s)": (
                round(statistics.median(gaps), 1) if gaps else None
            ),
            "network back to contact caught up (s)": drain,
            "gesture/command to the first SMS (s)": _since(trig, "sms", self.marks),
            "SMS reply to the device's answer (s)": _since(
                self.marks.get("sms-reply", []), "sms", self.marks
            ),
            "texts sent": len(self.marks.get("sms", [])),
            "gesture/command to the voice note whole at the relay (s)": _since(
                trig, "voice", self.marks
            ),
            "records received (distinct seq)": len(led.seen),
            "records lost": len(led.missing()),
            "records deliberately removed (gap notices)": len(led.removed),
            "duplicates (resends, dropped by seq)": led.duplicates,
            "final SOS state": final.get("state"),
        }
        replied = self.marks.get("sms-acked", [])
        alerts_after_ack = sum(
            1
            for t, m in self.mails
            if replied and t >= replied[0] and message_kind(m.subject) == "alert"
        )
        figures["relay alerts to Alice after her OK by SMS"] = alerts_after_ack
        got = {
            "link_sent": self.link is not None,
            "alerts_after_ack": alerts_after_ack,
            "records_lost": len(led.missing()),
            "sos_started": bool(starts),
            "drill": bool(starts) and all(r.drill for r in starts),
            "sos_delivered_within": latency,
            "ack_within": ack_latency,
            "max_route_gap": round(max(gaps), 1) if gaps else None,
            "caught_up_within": drain,
            "first_sms_within": _since(trig, "sms", self.marks),
            "sms_reply_confirmed_within": _since(
                self.marks.get("sms-reply", []), "sms", self.marks
            ),
            "first_fix_within": final.get("first_fix_after"),
            "final_state": final.get("state"),
        }
        checks = []
        for key, expected in self.s.expect.items():
            value = got[key]
            if key == "records_lost":
                ok = value <= expected
            elif isinstance(expected, bool) or key == "final_state":
                ok = value == expected
            else:
                ok = value is not None and value <= expected
            checks.append({"what": key, "expected": expected, "got": value, "ok": ok})
        return Report(
            self.s.name, self.s.description, self.s.time_scale, figures, checks, self.events
        )


#: the daemon's events worth a line in the timeline
_CUES = {
    "countdown": "countdown beeping (any press cancels)",
    "sos-active": "SOS active: LED flashing, GPS at full rate",
    "acknowledged": "buzzer: a contact acknowledged",
}
_SOS = {
    "cancelled": "countdown cancelled: no SOS",
    "resumed": "SOS resumed after the restart",
    "overridden": "the drill is overridden by a real SOS",
}


def device_line(ev: dict[str, Any]) -> str | None:
    """A daemon event (``device.events``) as the timeline shows it, or None."""
    kind = ev.get("kind")
    if kind == "cue":
        return _CUES.get(ev.get("cue", ""))
    if kind == "sos":
        return _SOS.get(ev.get("what", ""))
    if kind == "link":
        if ev.get("state") == "up":
            return "online"
        return ("link lost" if ev.get("lost") else "offline") + ": recording into the outbox"
    if kind == "battery-level":
        return (
            f"battery level {str(ev.get('from')).upper()} -> {str(ev.get('level')).upper()} "
            f"({ev.get('pct')}%)"
        )
    if kind == "sms":
        return f"texted {ev.get('to')} ({ev.get('chars')} characters)"
    if kind == "voice":
        what = ev.get("what")
        if what == "recording":
            return "recording a voice note (beside the SOS)"
        if what == "stored":
            return (
                f"voice note stored: {ev.get('seconds')} s, {ev.get('bytes')} bytes of Ogg Opus "
                f"in {ev.get('chunks')} chunk(s)"
            )
        return f"no voice note: {ev.get('error') or what}"
    if kind == "network":
        if ev.get("first"):
            return f"network {ev.get('state')}"
        return "network " + ("back: reconnecting now" if ev.get("state") == "up" else "gone")
    return None


def _since(start: list[float], name: str, marks: dict[str, list[float]]) -> float | None:
    """Seconds from the first ``start`` mark to the first ``name`` mark after it."""
    later = [m for m in marks.get(name, []) if start and m >= start[0]]
    return round(later[0] - start[0], 2) if later else None


def list_scenarios() -> list[Path]:
    return sorted(SCENARIOS.glob("*.toml"))


def resolve(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    shipped = SCENARIOS / f"{name.removesuffix('.toml')}.toml"
    if shipped.exists():
        return shipped
    names = ", ".join(x.stem for x in list_scenarios())
    raise ScenarioError(f"no scenario {name!r}: give a file, or one of: {names}")
