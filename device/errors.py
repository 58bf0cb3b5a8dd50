"""The one base of the errors sosbeacon raises on purpose.

``except SosbeaconError`` catches every one of them (a bad configuration, a refused
command, an outbox that cannot write, a broker that went away, ...), and nothing else:
a bug still surfaces as what it is. Each also derives from the built-in exception it is
a kind of (``ValueError``, ``OSError``, ``ConnectionError``), so code written against
those keeps working. The message always says what happened and, where there is
something to do, what to do.
"""

from __future__ import annotations


class SosbeaconError(Exception):
    """An error sosbeacon raised on purpose; the message says what to do."""


__all__ = ["SosbeaconError"]
