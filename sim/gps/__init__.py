"""Simulated GNSS receiver: routes, NMEA generation with faults, and a pseudo-terminal
that the real serial reader opens exactly as it would a UART."""

from sim.gps.generator import Fault, FaultKind, ReceiverScript, SimReceiver
from sim.gps.pty import PtyPort
from sim.gps.route import Route, RouteWalker

__all__ = [
    "Fault",
    "FaultKind",
    "PtyPort",
    "ReceiverScript",
    "Route",
    "RouteWalker",
    "SimReceiver",
]
