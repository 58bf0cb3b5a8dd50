"""Checksum validation and field layouts of the NMEA sentences that describe a fix.

We decode only what a position needs (RMC, GGA, GSA, GLL, VTG, ZDA, GST), from any talker
(GP, GN, GL, GA, GB, BD, GQ, ...). The layouts are data, not code: one table says which
field holds what. pynmeagps is the reference this module is tested against (the same
checksum verdict and the same values for every sentence in the real-receiver corpus);
we do not call it per sentence because it is an order of magnitude slower than this
table lookup, which matters at 10 Hz on a Pi Zero (see ``make bench``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import reduce
from operator import xor


class Reject(enum.Enum):
    """Why a candidate line is not a usable sentence."""

    NO_CHECKSUM = "no-checksum"
    BAD_CHECKSUM = "bad-checksum"
    GARBAGE = "garbage"
    UNKNOWN = "unknown"


#: Field positions (0-based, after the address field) per sentence type.
LAYOUTS: dict[str, dict[str, int]] = {
    "RMC": {
        "time": 0,
        "status": 1,
        "lat": 2,
        "ns": 3,
        "lon": 4,
        "ew": 5,
        "speed_kn": 6,
        "course": 7,
        "date": 8,
        "posmode": 11,
    },
    "GGA": {
        "time": 0,
        "lat": 1,
        "ns": 2,
        "lon": 3,
        "ew": 4,
        "quality": 5,
        "sats": 6,
        "hdop": 7,
        "alt": 8,
    },
    "GLL": {"lat": 0, "ns": 1, "lon": 2, "ew": 3, "time": 4, "status": 5, "posmode": 6},
    "GSA": {
        "opmode": 0,
        "navmode": 1,
        "sv_first": 2,
        "sv_end": 14,
        "pdop": 14,
        "hdop": 15,
        "vdop": 16,
    },
    "VTG": {"course": 0, "speed_kn": 4, "speed_kmh": 6, "posmode": 8},
    "ZDA": {"time": 0, "day": 1, "month": 2, "year": 3},
    "GST": {"time": 0, "lat_err": 5, "lon_err": 6},
}

_PRINTABLE = bytes(range(0x20, 0x7F))

#: fields each layout needs: a sentence is padded with empty fields up to this, so
#: reading a field is one subscript whatever the receiver left off its end
_WIDTH = {kind: max(layout.values()) + 1 for kind, layout in LAYOUTS.items()}
#: the layouts by the address's type as bytes, to reject the types we do not decode
#: (about half of a receiver's output: GSV, TXT, proprietary) before decoding them
_KINDS = {kind.encode(): kind for kind in LAYOUTS}


@dataclass(slots=True)
class Sentence:
    talker: str
    kind: str
    fields: list[str]
    #: ``LAYOUTS[kind]``
    layout: dict[str, int]

    def get(self, name: str) -> str:
        """The named field of this sentence's layout, ``""`` when absent."""
        return self.fields[self.layout[name]]


def checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``.

    The bytes are read as one integer whose halves are XORed together until one byte
    is left: seven integer operations in C instead of one Python-level XOR per byte
    (2.5 times faster on a typical 70-byte sentence, ``make bench``).
    """
    if len(body) > 128:
        return reduce(xor, body, 0)
    x = int.from_bytes(body, "little")
    x = (x >> 512) ^ (x & _LOW512)
    x = (x >> 256) ^ (x & _LOW256)
    x = (x >> 128) ^ (x & _LOW128)
    x = (x >> 64) ^ (x & _LOW64)
    x = (x >> 32) ^ (x & _LOW32)
    x = (x >> 16) ^ (x & 0xFFFF)
    return (x >> 8) ^ (x & 0xFF)


_LOW512, _LOW256, _LOW128, _LOW64, _LOW32 = ((1 << b) - 1 for b in (512, 256, 128, 64, 32))


def build_sentence(body: str) -> bytes:
    """``$body*hh\\r\\n``: a sentence with its checksum, as a receiver or host sends it."""
    return b"$" + body.encode("ascii") + b"*%02X\r\n" % checksum(body.encode("ascii"))


def split_sentence(raw: bytes) -> Sentence | Reject:
    """Validate one framed candidate (``$...*hh``) and split it into fields.

    Sentences of types we do not decode are returned as :attr:`Reject.UNKNOWN` *after*
    their checksum is checked, so a corrupted line is always counted as corrupted.
    """
    star = raw.rfind(b"*")
    if star < 0:
        return Reject.NO_CHECKSUM
    if raw.translate(None, _PRINTABLE):
        return Reject.GARBAGE
    body = raw[1:star]
    given = raw[star + 1 : star + 3]
    try:
        ok = len(given) == 2 and int(given, 16) == checksum(body)
    except ValueError:
        ok = False
    if not ok:
        return Reject.BAD_CHECKSUM
    comma = body.find(b",")
    address = body if comma < 0 else body[:comma]
    # Proprietary ($PUBX, $PMTK, ...) or a non-standard address: not ours either.
    kind = _KINDS.get(address[2:]) if len(address) == 5 and address[0] != 0x50 else None
    if kind is None:
        return Reject.UNKNOWN
    fields = body[6:].decode("ascii").split(",") if comma == 5 else []
    width = _WIDTH[kind]
    if len(fields) < width:
        fields += [""] * (width - len(fields))
    return Sentence(address[:2].decode("ascii"), kind, fields, LAYOUTS[kind])


def parse_latlon(value: str, hemi: str, degree_digits: int) -> float | None:
    """``ddmm.mmmm``/``dddmm.mmmm`` + hemisphere → signed decimal degrees."""
    if not value or hemi not in ("N", "S", "E", "W"):
        return None
    dot = value.find(".")
    split = (dot if dot >= 0 else len(value)) - 2
    if split < 1 or split > degree_digits:
        return None
    try:
        deg = int(value[:split])
        minutes = float(value[split:])
    except ValueError:
        return None
    if minutes >= 60.0 or minutes < 0.0:
        return None
    out = deg + minutes / 60.0
    limit = 90.0 if degree_digits == 2 else 180.0
    if out > limit:
        return None
    return -out if hemi in ("S", "W") else out


def parse_tod(value: str) -> float | None:
    """``hhmmss[.sss]`` → seconds of day."""
    if len(value) < 6:
        return None
    try:
        h = int(value[0:2])
        m = int(value[2:4])
        s = float(value[4:])
    except ValueError:
        return None
    if h > 23 or m > 59 or not 0.0 <= s < 61.0:
        return None
    return h * 3600 + m * 60 + s


def parse_float(value: str) -> float | None:
    if not value:
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if out == out and out not in (float("inf"), float("-inf")) else None


def parse_int(value: str) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        f = parse_float(value)
        return int(f) if f is not None and f == int(f) else None
