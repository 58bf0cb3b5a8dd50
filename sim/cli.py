"""``sos-sim``: the simulator's command line.

sos-sim nmea decode FILE...     decode captures through a pty and the real serial reader
sos-sim nmea corpus DIR         compare our decoding of gpsd's captures with gpsd's own
sos-sim gps run                 a simulated receiver on a pseudo-terminal
sos-sim gps generate -o FILE    write a simulated capture to a file
sos-sim drill SCENARIO          run a drill against the real daemon; print a report
sos-sim fleet --devices N       many simulated devices through the real relay
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from sosbeacon.device.gps import Fix, GpsStats
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.hw.nmea import DEFAULT_DATE_FLOOR
from sosbeacon.hw.serial_gps import NmeaSerialSource
from sosbeacon.sim.gps.generator import Fault, ReceiverScript, SimReceiver
from sosbeacon.sim.gps.pty import PtyPort
from sosbeacon.sim.gps.route import Route, RouteWalker
from sosbeacon.sim.gps.runner import capture_lines, run_receiver

log = logging.getLogger("sos-sim")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# -- nmea decode -----------------------------------------------------------------------


async def decode_via_pty(
    path: Path, *, baudrate: int | None, date_floor: date
) -> tuple[list[Fix], GpsStats]:
    """Send a capture through a pseudo-terminal into :class:`NmeaSerialSource`."""
    data = b"".join(capture_lines(path))
    with tempfile.TemporaryDirectory(prefix="sos-sim-") as tmp:
        port = PtyPort(Path(tmp) / "gps0", baudrate=baudrate)
        source = NmeaSerialSource(port=str(port.path), date_floor=date_floor, retry_interval=0.05)
        fixes: list[Fix] = []

        async def consume() -> None:
            async for fix in source.fixes():
                fixes.append(fix)

        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(source.connected.wait(), 5.0)
            await port.write(data)
            # Everything written has been read by the source before the line goes away.
            # A pty cannot tell the writer what the reader has consumed, so watch the
            # source's byte counter (a CLI-only wait; the daemon never does this).
            while source.stats.bytes < len(data):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            port.unplug()
            await asyncio.wait_for(source.disconnected.wait(), 5.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            port.close()
        return fixes, source.stats


def cmd_nmea_decode(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The line going away after each file is how decoding ends, not news.
        logging.getLogger("sosbeacon.hw.serial_gps").setLevel(logging.ERROR)
    status = 0
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            why = (
                "a directory: name the capture files in it (e.g. DIR/*.log)"
                if path.is_dir()
                else "no such file"
            )
            _err(f"{name}: {why}")
            status = 1
            continue
        fixes, st = asyncio.run(
            decode_via_pty(path, baudrate=args.baud, date_floor=args.date_floor)
        )
        for fix in fixes:
            if fix.has_position or args.all_epochs:
                row = fix.to_json()
                if len(args.files) > 1:
                    row = {"file": path.name, **row}
                _out(json.dumps(row))
        _err(
            f"{path.name}: {st.sentences} sentences, {st.bad_checksum} bad checksums, "
            f"{st.garbage} malformed lines, {st.noise_bytes} noise bytes, "
            f"{st.unknown} unused sentences, {st.epochs} epochs, {st.fixes} fixes"
        )
    return status


# -- nmea corpus -----------------------------------------------------------------------


def cmd_nmea_corpus(args: argparse.Namespace) -> int:
    from sosbeacon.sim.gpsd_corpus import compare_corpus

    results = compare_corpus(Path(args.directory))
    if not results:
        _err(f"{args.directory}: no *.log captures found")
        return 1
    total = sum(r.gpsd_fixes for r in results)
    matched = sum(r.matched for r in results)
    contradicted = sum(len(r.contradicted) for r in results)
    _out(f"{'capture':38} {'gpsd':>6} {'matched':>8} {'ours':>6} {'unrep.':>6} {'contra':>6}")
    for r in results:
        flag = "" if r.missed == 0 and not r.contradicted else "  <-"
        _out(
            f"{r.name:38} {r.gpsd_fixes:6} {r.matched:8} {r.decoded:6} "
            f"{len(r.unreported):6} {len(r.contradicted):6}{flag}"
        )
    share = matched / total if total else 1.0
    _out(
        f"{'TOTAL':38} {total:6} {matched:8}  {share:.2%} of gpsd's fixes matched; "
        f"{contradicted} positions where gpsd said no fix"
    )
    return 0 if share >= args.min_share and contradicted == 0 else 1


# -- gps run / generate ----------------------------------------------------------------


def _receiver(args: argparse.Namespace) -> SimReceiver:
    if args.route:
        route = Route.from_gpx(args.route)
    elif args.waypoints:
        route = Route.from_text(args.waypoints)
    else:
        route = Route.sample()
    outages = []
    for spec in args.outage:
        a, _, b = spec.partition(":")
        outages.append((float(a), float(b)))
    script = ReceiverScript(
        cold_start=args.cold_start,
        outages=outages,
        faults=[Fault.parse(f) for f in args.fault],
    )
    start = datetime.fromisoformat(args.start) if args.start else datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return SimReceiver(
        RouteWalker(route, args.speed),
        start=start,
        rate_hz=args.rate,
        talker=args.talker,
        script=script,
        noise=not args.no_noise,
        zda=args.zda,
        seed=args.seed,
    )


def cmd_gps_run(args: argparse.Namespace) -> int:
    async def main() -> None:
        link = Path(args.link) if args.link else Path(tempfile.mkdtemp(prefix="sos-sim-")) / "gps0"
        me = asyncio.current_task()
        assert me is not None
        # SIGTERM ends it like Ctrl-C: the device link is removed, not left behind
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
        port = PtyPort(link, baudrate=args.baud)
        _err(
            f"simulated GPS on {port.path} ({args.rate:g} Hz, {args.baud} baud); "
            "point the daemon's gps.device at it. Ctrl-C stops."
        )
        try:
            if args.replay:
                from sosbeacon.sim.gps.runner import replay_capture

                while True:
                    await replay_capture(Path(args.replay), port)
                    if not args.loop:
                        break
            else:
                await run_receiver(_receiver(args), port, duration=args.duration)
        finally:
            port.close()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(main())
    return 0


def cmd_gps_generate(args: argparse.Namespace) -> int:
    rx = _receiver(args)
    n_epochs = int(args.duration * args.rate)
    with open(args.output, "wb") as fh:
        fh.write(b"# Simulated capture written by sos-sim gps generate\n")
        for n in range(n_epochs):
            data, truth = rx.epoch(n)
            fh.write(data)
            if args.truth:
                args.truth.write(
                    json.dumps(
                        {
                            "time": truth.time.isoformat().replace("+00:00", "Z"),
                            "fix": truth.fix,
                            "lat": truth.lat,
                            "lon": truth.lon,
                            "alt": truth.alt,
                            "speed": truth.speed,
                            "course": truth.course,
                        }
                    )
                    + "\n"
                )
    _err(f"{args.output}: {n_epochs} epochs")
    return 0


def cmd_gps_watch(args: argparse.Namespace) -> int:
    """Print fixes from a real device or gpsd: the first check after wiring a receiver."""
    from sosbeacon.device.gps import GpsSource
    from sosbeacon.hw.gpsd_client import GpsdSource

    source: GpsSource
    if args.gpsd:
        host, _, port = args.gpsd.rpartition(":")
        source = GpsdSource(host=host or "127.0.0.1", port=int(port or 2947))
    else:
        source = NmeaSerialSource(port=args.device, baudrate=args.baud)

    async def main() -> None:
        n = 0
        async for fix in source.fixes():
            if fix.has_position or args.all_epochs:
                _out(json.dumps(fix.to_json()))
                n += 1
            if args.count and n >= args.count:
                break

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    st = source.stats
    _err(
        f"{st.sentences} sentences, {st.bad_checksum} bad checksums, {st.garbage} malformed, "
        f"{st.epochs} epochs, {st.fixes} fixes, {st.reconnects} reconnects"
    )
    return 0


# -- argument parsing ------------------------------------------------------------------


def _receiver_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("route and receiver")
    g.add_argument("--route", help="GPX file to follow (default: the bundled sample walk)")
    g.add_argument("--waypoints", help='"lat,lon[,alt];lat,lon[,alt];..." instead of a GPX')
    g.add_argument("--speed", type=float, default=1.4, help="m/s along the route (1.4)")
    g.add_argument("--rate", type=float, default=1.0, help="update rate, 0.1-10 Hz (1)")
    g.add_argument("--talker", default="GN", help="talker id: GP, GN, GL, GA, GB, BD (GN)")
    g.add_argument("--start", help="UTC start time, ISO 8601 (default: now)")
    g.add_argument(
        "--cold-start",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds without a fix after start",
    )
    g.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="A:B",
        help="no fix from A to B seconds (a tunnel); repeatable",
    )
    g.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND@S",
        help="inject a fault: bad-checksum, truncated, glued, ubx, zeroed-void, "
        "rollover; repeatable",
    )
    g.add_argument("--zda", action="store_true", help="also send ZDA")
    g.add_argument("--no-noise", action="store_true", help="exact route positions")
    g.add_argument("--seed", type=int, default=0)


def _date(value: str) -> date:
    return date.fromisoformat(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sos-sim", description="sosbeacon's simulator")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="group", required=True)

    nmea = sub.add_parser("nmea", help="NMEA captures").add_subparsers(dest="cmd", required=True)
    d = nmea.add_parser(
        "decode",
        help="decode captures through a pty and the serial reader",
        description="Each FILE is sent through a pseudo-terminal into the "
        "daemon's serial GPS reader. One JSON object per fix on stdout; a "
        "summary line per file on stderr. '#' comment lines are skipped, "
        "as gpsfake does.",
    )
    d.add_argument("files", nargs="+", metavar="FILE")
    d.add_argument(
        "--all-epochs",
        action="store_true",
        help="also print epochs without a position (mode none/unknown)",
    )
    d.add_argument(
        "--baud",
        type=int,
        default=None,
        help="pace the pty like a UART at this rate (default: as fast as read)",
    )
    d.add_argument(
        "--date-floor",
        type=_date,
        default=DEFAULT_DATE_FLOOR,
        help=f"dates before this are flagged (default {DEFAULT_DATE_FLOOR})",
    )
    d.set_defaults(func=cmd_nmea_decode)
    c = nmea.add_parser("corpus", help="compare with gpsd's decoding of its regression captures")
    c.add_argument("directory")
    c.add_argument("--min-share", type=float, default=0.99)
    c.set_defaults(func=cmd_nmea_corpus)

    gps = sub.add_parser("gps", help="simulated receiver").add_subparsers(dest="cmd", required=True)
    r = gps.add_parser("run", help="run a simulated receiver on a pseudo-terminal")
    _receiver_options(r)
    r.add_argument("--link", help="path of the device symlink to create (default: a temp dir)")
    r.add_argument("--baud", type=int, default=9600)
    r.add_argument("--duration", type=float, default=None, metavar="S")
    r.add_argument("--replay", help="send this capture instead of a simulated route")
    r.add_argument("--loop", action="store_true", help="with --replay: start over at the end")
    r.set_defaults(func=cmd_gps_run)
    w = gps.add_parser("watch", help="print fixes from a real receiver or from gpsd")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--device", help="serial device, e.g. /dev/serial0 or /dev/ttyACM0")
    src.add_argument("--gpsd", metavar="HOST:PORT", help="read from gpsd, e.g. 127.0.0.1:2947")
    w.add_argument("--baud", type=int, default=9600)
    w.add_argument("--count", type=int, default=0, help="stop after this many fixes")
    w.add_argument("--all-epochs", action="store_true", help="also print epochs without a fix")
    w.set_defaults(func=cmd_gps_watch)
    g = gps.add_parser("generate", help="write a simulated capture to a file")
    _receiver_options(g)
    g.add_argument("-o", "--output", required=True)
    g.add_argument("--duration", type=float, default=60.0, metavar="S")
    g.add_argument(
        "--truth",
        type=argparse.FileType("w"),
        help="also write what each epoch meant, as JSON lines",
    )
    g.set_defaults(func=cmd_gps_generate)

    dr = sub.add_parser("drill", help="run an SOS drill scenario and print a report")
    dr.add_argument("scenario", nargs="?", help="a scenario file, or the name of a shipped one")
    dr.add_argument("--list", action="store_true", help="list the shipped scenarios")
    dr.add_argument("--json", action="store_true", help="the report as JSON")
    dr.add_argument("--workdir", type=Path, help="keep the daemon's data and log here")
    dr.set_defaults(func=cmd_drill)

    fl = sub.add_parser(
        "fleet", help="many simulated devices through the real relay (load test, cost curve)"
    )
    fl.add_argument("--devices", type=int, default=10, help="how many (10)")
    fl.add_argument("--duration", type=float, default=20.0, help="seconds to run (20)")
    fl.add_argument("--sos-per-minute", type=float, default=60.0,
                    help="SOSes started per minute, on the devices in turn (60)")  # fmt: skip
    fl.add_argument("--sos-seconds", type=float, default=20.0, help="how long each lasts (20)")
    fl.add_argument("--relays", type=int, default=1, help="sos-relay processes (1)")
    fl.add_argument("--database", default="sqlite",
                    help="sqlite, postgresql (a throwaway server) or a database URL")  # fmt: skip
    fl.add_argument("--broker", help="mqtt://host:port (default: a throwaway Mosquitto)")
    fl.add_argument("--pause-relays", metavar="AT:SECONDS", default="",
                    help="stop the relays (SIGSTOP) AT s into the run for SECONDS")  # fmt: skip
    uplink = UplinkConfig(device_id="")  # its defaults
    fl.add_argument("--relay-window", type=int, default=uplink.relay_window,
                    help="each device's uplink.relay_window (%(default)s)")  # fmt: skip
    fl.add_argument("--relay-window-live", type=int, default=uplink.relay_window_live,
                    help="each device's uplink.relay_window_live (%(default)s)")  # fmt: skip
    fl.add_argument("--json", action="store_true", help="print the summary as JSON")
    fl.set_defaults(func=cmd_fleet)
    return p


def cmd_fleet(args: argparse.Namespace) -> int:
    from sosbeacon.sim.fleet import FleetSpec
    from sosbeacon.sim.fleet import main as fleet_main

    if args.devices < 1 or args.relays < 1:
        raise ValueError("--devices and --relays must be at least 1")
    if args.duration <= 0 or args.sos_seconds <= 0 or args.sos_per_minute < 0:
        raise ValueError("--duration and --sos-seconds must be positive, --sos-per-minute >= 0")
    pause_at = pause_for = 0.0
    if args.pause_relays:
        try:
            pause_at, pause_for = (float(x) for x in args.pause_relays.split(":"))
        except ValueError:
            raise ValueError("--pause-relays takes AT:SECONDS, e.g. 20:60") from None
        if pause_at < 0 or pause_for <= 0 or pause_at + pause_for > args.duration:
            raise ValueError("--pause-relays: the pause must fit in --duration")
    spec = FleetSpec(
        devices=args.devices, sos_per_minute=args.sos_per_minute, sos_seconds=args.sos_seconds,
        duration=args.duration, database=args.database, relays=args.relays, broker=args.broker,
        pause_at=pause_at, pause_seconds=pause_for,
        relay_window=args.relay_window, relay_window_live=args.relay_window_live,
    )  # fmt: skip
    return fleet_main(spec, as_json=args.json)


def cmd_drill(args: argparse.Namespace) -> int:
    from sosbeacon.sim.broker import find_mosquitto
    from sosbeacon.sim.drill import Drill, Scenario, list_scenarios, resolve

    if args.list or not args.scenario:
        for path in list_scenarios():
            sc = Scenario.load(path)
            _out(f"{path.stem:18} {sc.description}")
        return 0 if args.list else 2
    scenario = Scenario.load(resolve(args.scenario))
    if find_mosquitto() is None:
        _err("sos-sim drill needs Mosquitto: sudo apt-get install mosquitto")
        return 2

    def show(t: float, who: str, text: str) -> None:
        if not args.json:
            _out(f"{t:7.1f}s  {who:8} {text}")

    async def run(workdir: Path) -> int:
        report = await Drill(scenario, workdir, on_event=show).run()
        _out(report.json() if args.json else "\n" + report.text())
        return 0 if report.passed else 1

    if args.workdir:
        return asyncio.run(run(args.workdir))
    with tempfile.TemporaryDirectory(prefix="sos-drill-") as tmp:
        return asyncio.run(run(Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except ValueError as exc:
        _err(f"sos-sim: {exc}")
        return 2
    except BrokenPipeError:
        # Output piped into `head` or similar: stop quietly.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
