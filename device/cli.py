"""``sosd`` (the daemon) and ``sosctl`` (talks to it).

sosd run [--config FILE] [--sim] [--broker URL] [--device-id ID] [--data-dir DIR]
sosd check-config [--config FILE]
sosctl [--config FILE | --data-dir DIR] status | sos start [--drill] [--now] | sos stop
       | export [--out DIR] | purge [--yes] | alarm [--ack] | sim ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from sosbeacon.device import config as config_mod
from sosbeacon.device.clock import MonotonicClock, ScaledClock
from sosbeacon.device.commands import COMMANDS
from sosbeacon.device.config import DEFAULT_CONFIG, Config
from sosbeacon.device.control import NotRunning, follow, request
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.parts import DEFAULT_BACKEND, backend_info, backends, load_backend
from sosbeacon.device.private import write_private
from sosbeacon.device.receipts import describe
from sosbeacon.device.tomlconf import SECRET_KEYS, ConfigError, redact_url

COMMAND_NAMES = {name.value for name in COMMANDS}
# -- logging -----------------------------------------------------------------------------


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald keeps the level, adds the time itself."""

    LEVELS: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def format(self, record: logging.LogRecord) -> str:
        prio = self.LEVELS.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        text = super().format(record).replace("\n", "\n    ")
        return f"<{prio}>{record.name}: {text}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# -- sosd --------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> tuple[Config, Path | None, dict[str, Any]]:
    overrides: dict[str, Any] = {}
    if args.device_id:
        overrides["device.id"] = args.device_id
    if args.data_dir:
        overrides["device.data_dir"] = str(args.data_dir)
    if args.broker:
        overrides["mqtt.broker"] = args.broker
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        info = backend_info(args.backend)
        if info.defaults is None:
            runs_anywhere = [b for b in backends().values() if b.defaults is not None]
            hint = "".join(f", or try --{b.name} ({b.summary})" for b in runs_anywhere)
            raise ConfigError(
                str(DEFAULT_CONFIG),
                [
                    "the file does not exist: copy examples/sosbeacon.toml there and edit it, "
                    f"pass --config FILE{hint}"
                ],
            )
        base = info.defaults()
        return config_mod.load(text="", overrides={**base, **overrides}), None, overrides
    return config_mod.load(path, overrides=overrides), path, overrides


def sosd(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sosd", description="The sosbeacon daemon.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    check = sub.add_parser("check-config", help="validate the configuration and print it")
    for sp in (run, check):
        sp.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG})")
        sp.add_argument("--device-id", help="override device.id")
        sp.add_argument("--data-dir", type=Path, help="override device.data_dir")
        sp.add_argument("--broker", help="override mqtt.broker (mqtt://host:port, mqtts://...)")
    installed = backends()
    for sp in (run, check):
        sp.set_defaults(backend=DEFAULT_BACKEND)
        sp.add_argument(
            "--backend", choices=sorted(installed), help=f"the parts to run on ({DEFAULT_BACKEND})"
        )
        for name, info in sorted(installed.items()):
            if name != DEFAULT_BACKEND:  # --sim: each other backend's own flag
                sp.add_argument(
                    f"--{name}", dest="backend", action="store_const", const=name,
                    help=info.summary if sp is run else argparse.SUPPRESS,
                )  # fmt: skip
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    run.add_argument(
        "--time-scale",
        type=_time_scale,
        default=1.0,
        help="run the daemon's timers this many times faster (drills on the simulator; "
        "from 0.01 to 10000)",
    )
    args = p.parse_args(argv)
    try:
        cfg, path, overrides = build_config(args)
    except ConfigError as exc:
        sys.stderr.write(f"sosd: {exc}\n")
        return 2
    if args.command == "check-config":
        sys.stdout.write(json.dumps(_public(cfg), indent=2, default=str) + "\n")
        sys.stdout.write(f"{cfg.source}: valid\n")
        if not cfg.sos.contacts:
            sys.stdout.write(
                "WARNING: no emergency contact is configured, so SOS is NOT ARMED: add at "
                "least one [[sos.contacts]] entry (a running sosd takes it on SIGHUP: "
                "systemctl reload sosbeacon)\n"
            )
        for contact in cfg.sos.contacts:
            if not contact.reach.strip():
                sys.stdout.write(
                    f"WARNING: {contact.name} has no reach address, so the relay cannot tell "
                    "them of an SOS: set reach to an e-mail address, a phone number or "
                    "scheme:id (tgram:123456)\n"
                )
        return 0
    setup_logging(args.log_level)
    backend = load_backend(args.backend)

    clock = ScaledClock(args.time_scale) if args.time_scale != 1.0 else MonotonicClock()

    async def main() -> None:
        await Daemon(cfg, backend, clock=clock, config_path=path, overrides=overrides).run()

    try:
        asyncio.run(main())
    except RuntimeError as exc:  # e.g. another sosd already runs
        logging.getLogger("sosd").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("sosd").error("cannot start: %s", exc)
        return 1
    return 0


def _time_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.01 <= value <= 10_000:  # nan fails this too
        raise argparse.ArgumentTypeError(f"expected a number from 0.01 to 10000, got {text}")
    return value


def _public(cfg: Config) -> dict[str, Any]:
    """The configuration without secrets, for printing."""
    out = asdict(cfg)
    for key in SECRET_KEYS:
        if out["mqtt"].get(key):
            out["mqtt"][key] = "***"
    out["mqtt"]["broker"] = redact_url(out["mqtt"]["broker"])
    return out


# -- sosctl ------------------------------------------------------------------------------


def socket_path(args: argparse.Namespace) -> Path:
    """The same data directory as sosd: --data-dir, else the configuration's, else the
    one of the backend that runs without a configuration (the simulator's)."""
    if args.data_dir:
        return Path(args.data_dir) / "sosd.sock"
    path: Path | None = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        for info in backends().values():
            data = (info.defaults() if info.defaults else {}).get("device.data_dir")
            if data:
                return Path(data) / "sosd.sock"
        return config_mod.DeviceSettings().data_dir / "sosd.sock"
    # Only device.data_dir is needed; the rest (a password_file sosctl's user may not
    # read) is sosd's business.
    try:
        table = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise SystemExit(f"sosctl: cannot read {path}: {why}") from None
    device = table.get("device")
    data_dir = device.get("data_dir") if isinstance(device, dict) else None
    if not isinstance(data_dir, str) or not data_dir:
        data_dir = str(config_mod.DeviceSettings().data_dir)
    return Path(data_dir) / "sosd.sock"


def sosctl(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sosctl", description="Talk to the running sosd.")
    p.add_argument("--config", type=Path, help=f"sosd's TOML file (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", type=Path, help="sosd's data directory")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="state, last fix and its age, battery, link, outbox")
    events = sub.add_parser("events", help="follow what happens, live")
    events.add_argument(
        "--json", action="store_true", dest="events_json", help="one JSON object a line"
    )
    sos = sub.add_parser("sos", help="start or stop an SOS")
    sos_sub = sos.add_subparsers(dest="action", required=True)
    start = sos_sub.add_parser("start", help="start an SOS (after the countdown)")
    start.add_argument("--drill", action="store_true", help="a drill, flagged end to end")
    start.add_argument("--now", action="store_true", help="skip the countdown")
    sos_sub.add_parser("stop", help="stop the SOS now: no location is shared after this")
    for spec in COMMANDS.values():  # what contacts may do over MQTT, the owner may do here
        c = sub.add_parser(spec.name.value, help=spec.help)
        if spec.takes_session:
            c.add_argument("--session", help="the SOS session meant (refused if another is on)")
    export = sub.add_parser("export", help="everything stored: JSON, and GPX for routes")
    export.add_argument("--out", type=Path, default=Path("."), help="directory to write to")
    purge = sub.add_parser("purge", help="delete every record stored on the device")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    alarm = sub.add_parser("alarm", help="the store's alarm (a corrupt file salvaged)")
    alarm.add_argument("--ack", action="store_true", help="acknowledge it: status stops showing it")
    controlled = {n: b for n, b in backends().items() if b.controls}
    for name, info in sorted(controlled.items()):  # sosctl sim press long, ...
        bp = sub.add_parser(name, help=f"drive the {name} backend (sosd run --{name})")
        bp.add_argument("what", choices=[c.name for c in info.controls])
        bp.add_argument(
            "value", nargs="*", help="; ".join(f"{c.name}: {c.values}" for c in info.controls)
        )
    args = p.parse_args(argv)
    path = socket_path(args)

    if args.command == "events":
        try:
            return asyncio.run(_print_events(path, as_json=args.json or args.events_json))
        except NotRunning as exc:
            sys.stderr.write(f"sosctl: {exc}\n")
            return 3
        except KeyboardInterrupt:
            return 0
    if args.command == "status":
        req: dict[str, Any] = {"cmd": "status"}
    elif args.command == "sos":
        req = (
            {"cmd": "sos-start", "drill": args.drill, "now": args.now}
            if args.action == "start"
            else {"cmd": "sos-stop"}
        )
    elif args.command in COMMAND_NAMES:
        req = {"cmd": args.command}
        if getattr(args, "session", None):
            req["session"] = args.session
    elif args.command == "export":
        req = {"cmd": "export"}
    elif args.command == "alarm":
        req = {"cmd": "alarm-ack"} if args.ack else {"cmd": "status"}
    elif args.command == "purge":
        if not args.yes:
            try:
                typed = input(
                    "Delete every record stored on the device (routes, events, what has not "
                    "been sent yet)? Type 'purge' to confirm: "
                )
            except EOFError:  # no terminal (a script, </dev/null): never a yes
                typed = ""
                sys.stderr.write("\nsosctl: no answer; pass --yes to purge without asking\n")
            if typed.strip() != "purge":
                sys.stderr.write("sosctl: nothing deleted\n")
                return 1
        req = {"cmd": "purge"}
    else:  # a backend's control
        req = {"cmd": f"{args.command}.{args.what}", "value": " ".join(args.value)}
    try:
        answer = asyncio.run(request(path, req))
    except NotRunning as exc:
        sys.stderr.write(f"sosctl: {exc}\n")
        return 3
    if not answer.get("ok"):
        sys.stderr.write(f"sosctl: {answer.get('error', 'failed')}\n")
        return 1
    if answer.get("warning"):
        sys.stderr.write(f"sosctl: WARNING: {answer['warning']}\n")
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    elif args.command == "alarm":
        if args.ack:
            done = answer.get("acknowledged")
            sys.stdout.write("alarm acknowledged\n" if done else "no alarm to acknowledge\n")
        else:
            sys.stdout.write(f"{answer.get('alarm') or 'no alarm'}\n")
    elif args.command == "status":
        sys.stdout.write(format_status(answer))
    elif args.command == "export":
        try:
            sys.stdout.write(write_export(answer, args.out))
        except OSError as exc:
            sys.stderr.write(
                f"sosctl: cannot write the export to {args.out}: {exc.strerror or exc} "
                "(--out is a directory, made if missing)\n"
            )
            return 1
    else:
        rest = {k: v for k, v in answer.items() if k not in ("ok", "warning")}
        sys.stdout.write(" ".join(f"{k}={v}" for k, v in rest.items()) + "\n")
    return 0


def _modem_line(m: dict[str, Any]) -> str:
    if not m.get("ready"):
        return f"NOT READY on {m.get('port')} (texts cannot go)"
    if m.get("error"):
        return f"{m.get('port')}: {m['error']}"
    dbm = f", {m['signal_dbm']} dBm" if m.get("signal_dbm") is not None else ""
    if m.get("signal_pct") is not None:  # ModemManager gives a percentage
        dbm = f", signal {m['signal_pct']}%"
    off = "" if m.get("on_network") else " (NOT ON A NETWORK: texts wait)"
    return f"{str(m.get('registered', '?')).replace('_', ' ')}{dbm}{off}"


def format_status(s: dict[str, Any]) -> str:
    lines = [f"device      {s['device']}  ({'armed' if s['armed'] else 'NOT ARMED: no contact'})"]
    state = s["state"]
    if s.get("session"):
        state += f"  session {s['session']}" + ("  [DRILL]" if s.get("drill") else "")
    lines.append(f"sos         {state}")
    if s["fix"]:
        f = s["fix"]
        acc = f" ±{f['accuracy']:.0f} m" if f.get("accuracy") else ""
        lines.append(f"last fix    {f['lat']:.6f}, {f['lon']:.6f}{acc}, {s['fix_age']} s old")
    else:
        lines.append("last fix    none yet")
    b = s.get("battery")
    if b:
        lines.append(
            f"battery     {b.get('pct', '?')}% {b.get('status', '')} ({s['battery_level']})"
        )
    else:
        lines.append("battery     unknown")
    link = s["link"]
    state_txt = "connected" if link["connected"] else "offline"
    err = f"  last error: {link['last_error']}" if link.get("last_error") else ""
    lines.append(f"broker      {link['broker']} {state_txt}{err}")
    o = s["outbox"]
    oldest = f", oldest {o['oldest_age']} s old" if o["oldest_age"] is not None else ""
    lines.append(
        f"outbox      {o['depth']} to send ({o['in_flight']} in flight{oldest}); "
        f"{o['kept']} delivered SOS records kept until expiry"
    )
    if o.get("fault"):
        dropped = f", {o['held_dropped']} routine dropped" if o.get("held_dropped") else ""
        lines.append(
            f"storage     {o['fault']['what'].upper()} since {o['fault']['since']}: "
            f"{o['held']} record(s) held in memory until it can be written{dropped}"
        )
    for text in describe(s.get("delivery") or {}):
        lines.append(f"reached     {text}")
    sms = s.get("sms")
    if sms:
        now = "TEXTING THE CONTACTS (data not confirmed); " if sms.get("texting") else ""
        err = f"; last failure: {sms['last_error']}" if sms.get("last_error") else ""
        owed = sms.get("ends_owed") or 0
        ends = f"; {owed} earlier SOS still owe(s) their end text" if owed else ""
        lines.append(
            f"sms         {now}{sms['sent']} text(s) sent since start, {sms['acks']} OK by SMS"
            f"{ends}{err}"
        )
        if sms.get("modem") is not None:
            lines.append(f"modem       {_modem_line(sms['modem'])}")
    sh = s.get("shared")
    if sh:
        items = [f"location ({sh['precision']})"] + [
            k for k in ("battery", "events", "voice") if sh.get(k)
        ]
        held = [k for k in ("battery", "events", "voice") if not sh.get(k)]
        lines.append(
            f"shares      {', '.join(items)}" + (f"; not {', '.join(held)}" if held else "")
        )
    v = s.get("voice")
    if v and (v.get("recording") or v.get("stored") or v.get("failed")):
        now = "RECORDING; " if v.get("recording") else ""
        err = f"; last failure: {v['last_error']}" if v.get("last_error") else ""
        lines.append(f"voice       {now}{v['stored']} note(s) stored, {v['failed']} failed{err}")
    if s.get("alarm"):
        lines.append(f"ALARM       {s['alarm']}")
        lines.append("            (acknowledge with: sosctl alarm --ack)")
    return "\n".join(lines) + "\n"


def write_export(answer: dict[str, Any], out: Path) -> str:
    """``<device>-export.json`` with every record; one GPX track per SOS session."""
    out.mkdir(parents=True, exist_ok=True)
    device = answer["device"]
    js = out / f"{device}-export.json"
    doc = {k: v for k, v in answer.items() if k != "ok"}  # the control socket's, not the format's
    write_private(js, json.dumps(doc, indent=1).encode())
    import gpxpy.gpx  # for the export only: sosd run never loads it

    gpx = gpxpy.gpx.GPX()
    gpx.creator = "sosbeacon"
    tracks: dict[str, gpxpy.gpx.GPXTrackSegment] = {}
    for r in answer["records"]:
        fix = r["data"].get("fix") if r["kind"] in ("fix", "sos-start") else None
        if not fix or r["session"] is None:
            continue
        seg = tracks.get(r["session"])
        if seg is None:
            track = gpxpy.gpx.GPXTrack(name=f"{'DRILL' if r['drill'] else 'SOS'} {r['session']}")
            seg = gpxpy.gpx.GPXTrackSegment()
            track.segments.append(seg)
            gpx.tracks.append(track)
            tracks[r["session"]] = seg
        t = fix.get("t")
        seg.points.append(
            gpxpy.gpx.GPXTrackPoint(
                fix["lat"],
                fix["lon"],
                elevation=fix.get("alt"),
                time=datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None,
            )
        )
    written = [str(js)]
    path = out / f"{device}-routes.gpx"
    if tracks:
        write_private(path, gpx.to_xml().encode())
        written.append(str(path))
    elif path.exists():
        # routes of an earlier export, since purged or expired: not beside this one
        path.unlink()
        written.append(f"(removed {path}: no route is stored now)")
    n = len(answer["records"])
    return f"{n} records; wrote {', '.join(written)}\n"


def sosd_command(*args: str) -> list[str]:
    """The command line that runs ``sosd`` with ``args`` in this interpreter (whether or
    not the console script is on PATH): for drills, benchmarks and tests."""
    return _in_this_python("sosd_main", args)


def sosctl_command(*args: str) -> list[str]:
    """The same for ``sosctl``."""
    return _in_this_python("sosctl_main", args)


def _in_this_python(entry: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-c", f"from sosbeacon.device.cli import {entry}; {entry}()", *args]


def sosd_main() -> None:
    sys.exit(sosd())


async def _print_events(path: Path, *, as_json: bool) -> int:
    """``sosctl events``: until the daemon stops (exit 0) or Ctrl-C."""
    async for ev in follow(path, {"cmd": "events"}):
        if "kind" not in ev:
            continue  # the first line: following
        line = json.dumps(ev) if as_json else format_event(ev)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0


def format_event(ev: dict[str, Any]) -> str:
    """One line a person reads: ``14:02:07  sos       started (trigger cli)``."""
    when = datetime.fromtimestamp(ev["t"]).strftime("%H:%M:%S")
    rest = {k: v for k, v in ev.items() if k not in ("kind", "t")}
    head = rest.pop("what", None) or rest.pop("state", None) or rest.pop("cue", None) or ""
    details = ", ".join(f"{k} {v}" for k, v in rest.items() if v not in (None, "", []))
    return f"{when}  {ev['kind']:<13} {head}{f' ({details})' if details else ''}"


def sosctl_main() -> None:
    sys.exit(sosctl())
