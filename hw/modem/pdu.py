"""SMS PDUs, 3GPP TS 23.040, with the alphabets of TS 23.038: what ``AT+CMGS`` takes in
PDU mode and what ``+CMT``, ``+CMGR`` and ``+CDS`` give back.

* Text goes in the GSM 7-bit default alphabet (with its extension table: ``€ [ ] { } ^
  ~ \\ |`` cost two septets) when every character has a place there, else in UCS-2
  (UTF-16 code units; a character outside the BMP takes two).
* A text too long for one message is cut into parts with a concatenation header (8-bit
  reference): 153 septets or 67 UCS-2 units a part, never cutting an escape or a
  surrogate pair in two.
* SMS-SUBMIT (sent), SMS-DELIVER (received) and SMS-STATUS-REPORT (delivery reports)
  are encoded and decoded both ways: the driver sends SUBMITs and reads the other two;
  the simulated modem reads SUBMITs and makes the other two.

Written here rather than taken from a library: ``smspdu`` (2016, Python 2) does not
build on Python 3.11 and ``python-gsmmodem-2`` is not available to us; the codec is
checked against the standard's published examples and by round trips.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

#: TS 23.038 6.2.1, the default alphabet, by septet
GSM7 = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
ESC = 0x1B
#: the extension table (after ESC)
GSM7_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
            0x3E: "]", 0x40: "|", 0x65: "€"}  # fmt: skip
_TO_GSM7 = {c: i for i, c in enumerate(GSM7) if i != ESC}
_TO_EXT = {c: i for i, c in GSM7_EXT.items()}
assert len(GSM7) == 128

#: user data: 140 octets; a concatenation header takes 6 of them
UD_OCTETS = 140
SINGLE_GSM7, PART_GSM7 = 160, 153
SINGLE_UCS2, PART_UCS2 = 70, 67
#: the most parts a text may have (an 8-bit count; more would be no message for a person)
MAX_PARTS = 255


class PduError(ValueError):
    """A PDU that cannot be read, or a text or number that cannot be sent."""


class Coding(enum.IntEnum):
    """TP-DCS, the data coding scheme (general group, no class)."""

    GSM7 = 0x00
    UCS2 = 0x08


def gsm7_septets(text: str) -> list[int] | None:
    """``text`` as default-alphabet septets, or None if a character has no place there."""
    out: list[int] = []
    for c in text:
        if c in _TO_GSM7:
            out.append(_TO_GSM7[c])
        elif c in _TO_EXT:
            out += (ESC, _TO_EXT[c])
        else:
            return None
    return out


def gsm7_text(septets: list[int]) -> str:
    out, escaped = [], False
    for s in septets:
        if escaped:
            out.append(GSM7_EXT.get(s, " "))  # an unknown extension: a space (23.038)
            escaped = False
        elif s == ESC:
            escaped = True
        else:
            out.append(GSM7[s])
    return "".join(out)


def pack7(septets: list[int], fill: int = 0) -> bytes:
    """Septets packed into octets, least significant bit first, after ``fill`` bits."""
    acc, bits, out = 0, fill, bytearray()
    for s in septets:
        acc |= (s & 0x7F) << bits
        bits += 7
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack7(data: bytes, count: int, fill: int = 0) -> list[int]:
    acc = int.from_bytes(data, "little") >> fill
    return [(acc >> (7 * i)) & 0x7F for i in range(count)]


@dataclass(frozen=True, slots=True)
class Part:
    """One message of a text: its user data and, when concatenated, its place."""

    coding: Coding
    #: septets (GSM 7-bit) or UTF-16 code units (UCS-2)
    units: list[int]
    #: (reference, total, number from 1) of a concatenated text; None for a single one
    concat: tuple[int, int, int] | None = None


def split(text: str, ref: int) -> list[Part]:
    """``text`` as the fewest messages: GSM 7-bit if it can, else UCS-2."""
    septets = gsm7_septets(text)
    if septets is not None:
        coding, units, single, per = Coding.GSM7, septets, SINGLE_GSM7, PART_GSM7
    else:
        raw = text.encode("utf-16-be")
        units = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        coding, single, per = Coding.UCS2, SINGLE_UCS2, PART_UCS2
    if len(units) <= single:
        return [Part(coding, units)]
    chunks: list[list[int]] = []
    i = 0
    while i < len(units):
        end = min(i + per, len(units))
        if end < len(units):
            last = units[end - 1]
            if coding is Coding.GSM7 and last == ESC and _escape_opens(units, end - 1):
                end -= 1  # an escape and what it escapes stay together
            elif coding is Coding.UCS2 and 0xD800 <= last <= 0xDBFF:
                end -= 1  # so do the halves of a surrogate pair
        chunks.append(units[i:end])
        i = end
    if len(chunks) > MAX_PARTS:
        raise PduError(f"text too long: {len(chunks)} messages (at most {MAX_PARTS})")
    return [Part(coding, c, (ref & 0xFF, len(chunks), n)) for n, c in enumerate(chunks, 1)]


def _escape_opens(units: list[int], at: int) -> bool:
    """Whether the ESC at ``at`` starts an escape (an odd run of ESCs up to it)."""
    run = 0
    while at - run >= 0 and units[at - run] == ESC:
        run += 1
    return run % 2 == 1


def _user_data(part: Part) -> tuple[int, bytes, bool]:
    """TP-UDL, TP-UD and whether a header is in it (TP-UDHI)."""
    udh = b"" if part.concat is None else bytes((5, 0, 3, *part.concat))
    if part.coding is Coding.GSM7:
        fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
        header_septets = (len(udh) * 8 + fill) // 7
        # the header ends on an octet boundary; fill bits bring the text to a septet one
        return header_septets + len(part.units), udh + pack7(part.units, fill), bool(udh)
    body = b"".join(u.to_bytes(2, "big") for u in part.units)
    return len(udh) + len(body), udh + body, bool(udh)


def _read_user_data(
    coding: int, udhi: bool, udl: int, ud: bytes
) -> tuple[str, tuple[int, int, int] | None]:
    concat = None
    hlen = 0
    if udhi:
        if not ud:
            raise PduError("a user data header was announced, and none is there")
        hlen = ud[0] + 1
        i = 1
        while i + 1 < hlen:
            iei, iedl = ud[i], ud[i + 1]
            value = ud[i + 2 : i + 2 + iedl]
            if iei == 0x00 and iedl == 3:
                concat = (value[0], value[1], value[2])
            elif iei == 0x08 and iedl == 4:  # 16-bit reference
                concat = ((value[0] << 8) | value[1], value[2], value[3])
            i += 2 + iedl
    alphabet = _alphabet(coding)
    if alphabet == 0:  # GSM 7-bit: UDL counts septets, the header's included
        header_bits = hlen * 8
        fill = (7 - header_bits % 7) % 7 if hlen else 0
        skip = (header_bits + fill) // 7
        septets = unpack7(ud[hlen:], udl - skip, fill)
        return gsm7_text(septets), concat
    body = ud[hlen:udl]
    if alphabet == 2:
        return body.decode("utf-16-be", errors="replace"), concat
    return body.decode("latin-1"), concat  # 8-bit data: shown as it is


def _alphabet(dcs: int) -> int:
    """TP-DCS's alphabet (TS 23.038 4): 0 GSM 7-bit, 1 8-bit data, 2 UCS-2."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (compressed or not, with or without class)
        return (dcs >> 2) & 0x03 if (dcs >> 2) & 0x03 != 3 else 0
    if group in (0xC, 0xD):  # message waiting, discard or store: GSM 7-bit
        return 0
    if group == 0xE:  # message waiting, store: UCS-2
        return 2
    if group == 0xF:  # data coding / message class: bit 2 says 8-bit
        return 1 if dcs & 0x04 else 0
    return 0


def encode_number(number: str) -> bytes:
    """A phone number as an address: its digits count, type, semi-octets."""
    digits = number.replace(" ", "").replace("-", "")
    toa = 0x81
    if digits.startswith("+"):
        toa, digits = 0x91, digits[1:]
    if not digits or not all(c in "0123456789*#" for c in digits):
        raise PduError(f"not a phone number: {number!r} (digits, an optional leading +)")
    if len(digits) > 20:
        raise PduError(f"phone number too long: {number!r}")
    return bytes((len(digits), toa)) + _semi_octets(digits)


def _semi_octets(digits: str) -> bytes:
    code = {str(d): d for d in range(10)} | {"*": 0xA, "#": 0xB}
    padded = digits + ("F" if len(digits) % 2 else "")
    return bytes(
        (0xF if padded[i + 1] == "F" else code[padded[i + 1]]) << 4 | code[padded[i]]
        for i in range(0, len(padded), 2)
    )


def _read_semi_octets(data: bytes, count: int) -> str:
    chars = "0123456789*#abc"
    out = []
    for b in data:
        for nib in (b & 0x0F, b >> 4):
            if nib != 0xF:
                out.append(chars[nib] if nib < len(chars) else "?")
    return "".join(out)[:count]


def _read_address(pdu: bytes, i: int) -> tuple[str, int]:
    """An address (TP-OA, TP-DA, TP-RA) at ``i``: the number and where the next field
    starts."""
    ndigits, toa = pdu[i], pdu[i + 1]
    octets = (ndigits + 1) // 2
    raw = pdu[i + 2 : i + 2 + octets]
    if toa & 0x70 == 0x50:  # alphanumeric: GSM 7-bit in the semi-octets' room
        number = gsm7_text(unpack7(raw, ndigits * 4 // 7))
    else:
        number = ("+" if toa & 0x70 == 0x10 else "") + _read_semi_octets(raw, ndigits)
    return number, i + 2 + octets


def _timestamp(raw: bytes) -> datetime:
    """TP-SCTS: semi-octets YY MM DD hh mm ss, and the zone in quarter hours."""
    f = [int(f"{b & 0x0F}{b >> 4}") for b in raw[:6]]
    tz = raw[6]
    quarters = int(f"{tz & 0x07}{tz >> 4}")
    offset = timedelta(minutes=15 * quarters) * (-1 if tz & 0x08 else 1)
    return datetime(2000 + f[0], f[1], f[2], f[3], f[4], f[5], tzinfo=timezone(offset))


def _encode_timestamp(at: datetime) -> bytes:
    off = at.utcoffset() or timedelta(0)
    quarters = int(abs(off.total_seconds()) // 900)
    fields = (at.year % 100, at.month, at.day, at.hour, at.minute, at.second)
    out = bytes((n % 10) << 4 | (n // 10) for n in fields)
    tz = (quarters % 10) << 4 | (quarters // 10) | (0x08 if off < timedelta(0) else 0)
    return out + bytes((tz,))


# -- SMS-SUBMIT: what the device sends ----------------------------------------------------

#: TP-VP, relative: 0xA7 is 24 hours (TS 23.040 9.2.3.12.1)
VALIDITY_24H = 0xA7


def submit(to: str, part: Part, *, report: bool = True, validity: int = VALIDITY_24H) -> bytes:
    """One SMS-SUBMIT, without the service centre address (the caller prefixes ``00``:
    the SIM's own) and with a relative validity period; ``report`` asks for a delivery
    report."""
    udl, ud, udhi = _user_data(part)
    first = 0x01 | 0x10 | (0x20 if report else 0) | (0x40 if udhi else 0)
    return (
        bytes((first, 0x00))
        + encode_number(to)
        + bytes((0x00, int(part.coding), validity & 0xFF, udl))
        + ud
    )


@dataclass(frozen=True, slots=True)
class Submitted:
    to: str
    text: str
    concat: tuple[int, int, int] | None
    report: bool


def read_submit(pdu: bytes) -> Submitted:
    """An SMS-SUBMIT as ``submit`` makes it (no service centre address in front)."""
    try:
        first = pdu[0]
        if first & 0x03 != 0x01:
            raise PduError("not an SMS-SUBMIT")
        to, i = _read_address(pdu, 2)
        dcs = pdu[i + 1]
        i += 2
        vpf = (first >> 3) & 0x03
        i += {0: 0, 2: 1}.get(vpf, 7)
        udl = pdu[i]
        text, concat = _read_user_data(dcs, bool(first & 0x40), udl, pdu[i + 1 :])
    except IndexError:
        raise PduError("the SMS-SUBMIT ends too soon") from None
    return Submitted(to, text, concat, bool(first & 0x20))


# -- SMS-DELIVER: what the device receives ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    sender: str
    text: str
    at: datetime
    concat: tuple[int, int, int] | None = None


def read_deliver(pdu: bytes) -> Delivered:
    """An SMS-DELIVER as a modem gives it in PDU mode (service centre address first)."""
    try:
        i = pdu[0] + 1
        first = pdu[i]
        if first & 0x03 != 0x00:
            raise PduError("not an SMS-DELIVER")
        sender, i = _read_address(pdu, i + 1)
        dcs = pdu[i + 1]
        at = _timestamp(pdu[i + 2 : i + 9])
        udl = pdu[i + 9]
        text, concat = _read_user_data(dcs, bool(first & 0x40), udl, pdu[i + 10 :])
    except (IndexError, ValueError) as exc:
        raise PduError(f"unreadable SMS-DELIVER: {exc}") from None
    return Delivered(sender, text, at, concat)


def deliver(sender: str, part: Part, at: datetime, *, smsc: str = "+447700900000") -> bytes:
    """An SMS-DELIVER (the simulated modem's incoming messages)."""
    sca = encode_number(smsc)
    sca = bytes((len(sca) - 1,)) + sca[1:]  # its length in octets, not digits
    udl, ud, udhi = _user_data(part)
    first = 0x04 | (0x40 if udhi else 0)  # no more messages waiting
    return (
        sca
        + bytes((first,))
        + encode_number(sender)
        + bytes((0x00, int(part.coding)))
        + _encode_timestamp(at)
        + bytes((udl,))
        + ud
    )


# -- SMS-STATUS-REPORT: did it arrive ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusReport:
    #: the message reference the modem gave the SMS (``+CMGS: <mr>``)
    reference: int
    recipient: str
    #: TP-ST: 0x00-0x1F done (0x00: received), 0x20-0x3F still trying, 0x40+ failed
    status: int
    at: datetime

    @property
    def delivered(self) -> bool:
        return self.status < 0x20

    @property
    def failed(self) -> bool:
        return self.status >= 0x40


def read_status_report(pdu: bytes) -> StatusReport:
    try:
        i = pdu[0] + 1
        first = pdu[i]
        if first & 0x03 != 0x02:
            raise PduError("not an SMS-STATUS-REPORT")
        ref = pdu[i + 1]
        recipient, i = _read_address(pdu, i + 2)
        done = _timestamp(pdu[i + 7 : i + 14])
        status = pdu[i + 14]
    except (IndexError, ValueError) as exc:
        raise PduError(f"unreadable SMS-STATUS-REPORT: {exc}") from None
    return StatusReport(ref, recipient, status, done)


def status_report(reference: int, recipient: str, status: int, at: datetime) -> bytes:
    """An SMS-STATUS-REPORT (the simulated modem's delivery reports)."""
    ts = _encode_timestamp(at)
    return (
        bytes((0x00, 0x06, reference & 0xFF))
        + encode_number(recipient)
        + ts
        + ts
        + bytes((status,))
    )
