"""The world without hardware: simulated GPS on a pseudo-terminal (and, as the project
grows, button, battery, network faults and broker), plus tools to decode and compare
real captures. Drives the real code paths of :mod:`hw` wherever the OS allows."""
