"""Real hardware behind the Protocols of :mod:`device`: GPS over serial or gpsd, and
(later) the button and the battery. Nothing here is imported by :mod:`device`."""
