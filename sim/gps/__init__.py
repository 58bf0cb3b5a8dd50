"""Simulated GNSS receiver: routes, NMEA generation with faults, and a pseudo-terminal
that the real serial reader opens exactly as it would a UART."""

from sosbeacon.sim.gps.generator import Fault, FaultKind, ReceiverScript, SimReceiver
from sosbeacon.sim.gps.pty import PtyPort
from sosbeacon.sim.gps.route import Route, RouteWalker

__all__ = [
    "Fault",
    "FaultKind",
    "PtyPort",
    "ReceiverScript",
    "Route",
    "RouteWalker",
    "SimReceiver",
]
