"""What goes on the wire: topics, payloads, commands, and the receiver's proof of no loss.

``docs/wire-format.md`` is the reference for every field; this module is the one place
that writes (and, for receivers and tests, reads) them. Pure functions, no I/O.

The ``track`` payload is compact on purpose (a fix costs about 25 bytes instead of the
~110 of an OwnTracks location): fixes are rows of numbers, and within a message each row
after the first carries ``seq``, time, latitude and longitude as differences from the row
before, with positions in integer micro-degrees (0.11 m).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.records import FixRun, Item, Record, RecordKind, Stored, TrackRow
from sosbeacon.device.tomlconf import too_open

WIRE_VERSION = 1
#: kinds published one per message on the ``sos`` topic; every other kind goes in ``track``
SOS_KINDS = frozenset(
    {RecordKind.SOS_START, RecordKind.SOS_END, RecordKind.LAST_GASP, RecordKind.SOS_ACK}
)
#: of those, the lifecycle records kept retained on ``sos`` (the topic's latest state)
RETAINED_KINDS = frozenset({RecordKind.SOS_START, RecordKind.SOS_END})
#: records that go one to a message, on a topic of their kind's own: the lifecycle on
#: ``sos``, voice-note chunks on ``voice``
SINGLE_KINDS = SOS_KINDS | {RecordKind.VOICE}
MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Topics:
    """``<prefix>/<device_id>/{track,sos,status,cmd}``."""

    base: str

    @classmethod
    def for_device(cls, device_id: str, prefix: str = "sosbeacon") -> Topics:
        for part, what in ((device_id, "device id"), (prefix, "topic prefix")):
            if not part or any(c in part for c in "+#\0") or part.startswith("/"):
                raise ValueError(
                    f"invalid {what} {part!r}: it must be non-empty, must not start with "
                    "'/' and must not contain '+', '#' or NUL"
                )
        if "/" in device_id:
            raise ValueError(f"invalid device id {device_id!r}: it must not contain '/'")
        return cls(f"{prefix.rstrip('/')}/{device_id}")

    @property
    def track(self) -> str:
        return f"{self.base}/track"

    @property
    def sos(self) -> str:
        return f"{self.base}/sos"

    @property
    def voice(self) -> str:
        """Voice-note chunks, one per message."""
        return f"{self.base}/voice"

    def single(self, kind: RecordKind) -> str:
        """The topic of a record that goes alone (:data:`SINGLE_KINDS`)."""
        return self.voice if kind is RecordKind.VOICE else self.sos

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def receipt(self) -> str:
        """The relay's receipts for the device (retained)."""
        return f"{self.base}/receipt"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def epoch(t: datetime) -> float:
    """Seconds since the epoch, to the millisecond."""
    return round(t.timestamp(), 3)


def _num(x: float) -> float | int:
    """A number as short as JSON allows: ``1`` rather than ``1.0``."""
    return int(x) if float(x).is_integer() else x


def _micro(deg: float) -> int:
    return round(deg * MICRO)


# -- encoding ----------------------------------------------------------------------------


def fix_time(record: Record) -> datetime:
    """The fix's own time (from the receiver) when it has one, else when it was recorded.
    Data to report, never a schedule (see :func:`shown_time`)."""
    fix = record.data.get("fix") or {}
    t = fix.get("t")
    if isinstance(t, str):
        try:
            parsed = datetime.fromisoformat(t)  # Python 3.11 reads a trailing "Z"
        except ValueError:
            return record.time
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return record.time


def time_suspect(record: Record) -> bool:
    """The receiver flagged the fix's date as not to be trusted (``time_issue``: a GPS
    week rollover, a date before ``gps.date_floor``, no date seen yet)."""
    fix = record.data.get("fix")
    return isinstance(fix, dict) and fix.get("time_issue") is not None


def shown_time(record: Record) -> datetime:
    """The time to show a person for a fix: the receiver's own, unless it flagged it as
    suspect; then when the device recorded it (by the device's clock), so a receiver
    19.6 years behind after a week rollover does not show a position as "19 years
    old"."""
    return record.time if time_suspect(record) else fix_time(record)


def _usable(x: object) -> float | None:
    """``x`` as a float if it is a finite number (the common case, kept fast)."""
    if type(x) is float:
        return x if x - x == 0.0 else None  # NaN and infinities fail x - x == 0
    if type(x) is int:
        return float(x)
    return None


def _fix_tail(fix: dict[str, Any]) -> list[Any]:
    """alt (m), spd (m/s, 0.1), crs (degrees), acc (m); unknown (or unusable) values are
    ``null``, trailing ones left off."""

    alt, spd, crs, acc = (_usable(fix.get(k)) for k in ("alt", "spd", "crs", "acc"))
    tail: list[Any] = [
        None if alt is None else round(alt),
        None if spd is None else _num(round(spd, 1)),
        None if crs is None else round(crs) % 360,
        None if acc is None else max(0, math.ceil(acc)),
    ]
    while tail and tail[-1] is None:
        tail.pop()
    return tail


_BATTERY_KEYS = ("pct", "status", "v", "a", "temp")


def track_row(record: Record) -> TrackRow | None:
    """A fix with a usable position as a ``track`` row (absolute values; the message
    turns them into differences): ``None`` for anything else. A fix whose time the
    receiver flagged as suspect has no row either: a row has no place for the flag, so
    it goes whole, as an object, with the flag and the device's time beside it."""
    if record.kind is not RecordKind.FIX or time_suspect(record):
        return None
    fix = record.data.get("fix")
    if not fix or _usable(fix.get("lat")) is None or _usable(fix.get("lon")) is None:
        return None
    tail = dumps(_fix_tail(fix))[1:-1].decode()
    return round(epoch(fix_time(record)) * 1000), _micro(fix["lat"]), _micro(fix["lon"]), tail


def _seconds(ms: int) -> str:
    """Milliseconds as JSON seconds, as short as JSON allows (``_num(ms / 1000)``)."""
    return str(ms // 1000) if ms % 1000 == 0 else repr(ms / 1000)


def row_delta(prev_seq: int, prev: TrackRow, seq: int, row: TrackRow) -> str:
    """A fix's ``track`` row after the first of a message, as JSON text without its
    brackets: seq, time, latitude and longitude as differences from the row before."""
    t, lat, lon, tail = row
    head = f"{seq - prev_seq},{_seconds(t - prev[0])},{lat - prev[1]},{lon - prev[2]}"
    return f"{head},{tail}" if tail else head


def _row_first(seq: int, row: TrackRow) -> str:
    t, lat, lon, tail = row
    head = f"{seq},{_seconds(t)},{_num(lat / MICRO)!r},{_num(lon / MICRO)!r}"
    return f"{head},{tail}" if tail else head


#: fixes that follow one another in a message: the first (seq, row), the last, and the
#: text of every row after the first (:func:`row_delta`)
_Segment = tuple[int, TrackRow, int, TrackRow, Sequence[str]]


def _fix_rows(segments: list[_Segment]) -> str:
    """The ``fix`` array as JSON text, joined from the rows' texts: the hot path of a
    drain. A segment's first row is worked out here; the rest come ready."""
    parts: list[str] = []
    prev: tuple[int, TrackRow] | None = None
    for seq, row, last_seq, last_row, deltas in segments:
        parts.append(_row_first(seq, row) if prev is None else row_delta(*prev, seq, row))
        parts += deltas
        prev = last_seq, last_row
    return f"[[{'],['.join(parts)}]]"


def encode_track(box: str, records: Sequence[Item]) -> bytes:
    """One ``track`` message: records of one session (or none), in seq order.

    Fix rows: ``[seq, t, lat, lon, alt, spd, crs, acc]``; in every row after the first,
    ``seq``, ``t`` (s), ``lat`` and ``lon`` (micro-degrees) are differences from the row
    before. Battery rows: ``[seq, t, pct, status, v, a, temp]``, ``seq`` and ``t`` as
    differences likewise. Gap records and anything else are listed as objects.

    A fix's row comes from :attr:`Stored.row` when the store worked it out already, so
    the records of a drained backlog are never decoded; a :class:`FixRun` brings the
    text of every row after its first, and the message is joined from it.
    """
    if not records:
        raise ValueError("a track message needs at least one record")
    first = records[0]
    msg: dict[str, Any] = {"v": WIRE_VERSION, "box": box}
    if first.session:
        msg["sess"] = first.session
    if first.drill:
        msg["drill"] = True
    if first.expires is not None:
        msg["exp"] = int(first.expires.timestamp())
    fixes: list[_Segment] = []
    batts: list[list[Any]] = []
    gaps: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    prev_bat: tuple[int, int] | None = None
    for s in records:
        if s.session != first.session or s.drill != first.drill:
            raise ValueError("records of one track message must share session and drill")
        if isinstance(s, FixRun):
            f, last = s.first, s.last
            assert f.row is not None and last.row is not None  # FixRun checks it
            fixes.append((f.seq, f.row, last.seq, last.row, s.deltas))
            continue
        row = s.row
        if row is None and s.kind is RecordKind.FIX:
            row = track_row(s.record)
        if row is not None:
            fixes.append((s.seq, row, s.seq, row, ()))
            continue
        r = s.record
        if r.kind is RecordKind.BATTERY and isinstance(r.data.get("battery"), dict):
            b = r.data["battery"]
            tms = round(epoch(r.time) * 1000)
            if prev_bat is None:
                brow: list[Any] = [s.seq, _num(tms / 1000)]
            else:
                brow = [s.seq - prev_bat[0], _num((tms - prev_bat[1]) / 1000)]
            prev_bat = (s.seq, tms)
            brow += [b.get(k) for k in _BATTERY_KEYS]
            while len(brow) > 2 and brow[-1] is None:
                brow.pop()
            batts.append(brow)
        elif r.kind is RecordKind.GAP:
            gaps.append({"seq": s.seq, "t": _num(epoch(r.time)), **r.data})
        else:
            # anything else, including a record whose fields do not fit a row: sent as it
            # is, never dropped (its seq must reach the receiver)
            other.append({"seq": s.seq, "t": _num(epoch(r.time)), "kind": r.kind.value, **r.data})
    parts = [dumps(msg)[:-1].decode()]
    if fixes:
        parts.append(f'"fix":{_fix_rows(fixes)}')
    for key, rows in (("bat", batts), ("gap", gaps), ("ev", other)):
        if rows:
            parts.append(f'"{key}":{dumps(rows).decode()}')
    return (",".join(parts) + "}").encode()


def encode_sos(box: str, seq: int, r: Record) -> bytes:
    """One record alone in its message: an SOS lifecycle record (``sos-start``,
    ``sos-end``, ``last-gasp``, ``sos-ack``) on ``sos``, or a voice-note chunk on
    ``voice``."""
    msg = _single_head(box, seq, r.kind, r.time, r.session, r.drill, r.expires)
    msg["data"] = r.data
    return dumps(msg)


def encode_stored(box: str, s: Stored) -> bytes:
    """:func:`encode_sos` of a stored record: the same bytes, with the data's JSON text
    as the outbox stored it when it is at hand (a record read back from the outbox),
    neither decoded nor encoded again ("data" is the message's last member)."""
    text = s.data_json()
    if text is None:
        return encode_sos(box, s.seq, s.record)
    head = dumps(_single_head(box, s.seq, s.kind, s.time, s.session, s.drill, s.expires))
    return b"".join((head[:-1], b',"data":', text.encode(), b"}"))


def _single_head(
    box: str,
    seq: int,
    kind: RecordKind,
    time: datetime,
    session: str | None,
    drill: bool,
    expires: datetime | None,
) -> dict[str, Any]:
    return {
        "v": WIRE_VERSION,
        "box": box,
        "seq": seq,
        "kind": kind.value,
        "t": _num(epoch(time)),
        "sess": session,
        "drill": drill,
        "exp": None if expires is None else int(expires.timestamp()),
    }


def status_payload(state: str, *, box: str, at: datetime, why: str | None = None) -> bytes:
    msg: dict[str, Any] = {"v": WIRE_VERSION, "state": state, "t": int(at.timestamp())}
    if box:
        msg["box"] = box
    if why:
        msg["why"] = why
    return dumps(msg)


def owntracks_location(
    fix: dict[str, Any],
    *,
    at: datetime,
    tid: str,
    battery: dict[str, Any] | None = None,
    trigger: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """An OwnTracks ``location`` message for a shared fix (schema in
    ``../shared/owntracks-schema``): integers where the schema wants integers, speed in
    km/h. ``tag`` carries "SOS" or "DRILL"; never ``t: s`` or ``t: !`` (speed and tow
    alarms to other consumers)."""
    msg: dict[str, Any] = {
        "_type": "location",
        "tid": tid[:2],
        "tst": int(at.timestamp()),
        "lat": fix["lat"],
        "lon": fix["lon"],
    }
    if fix.get("acc") is not None:
        msg["acc"] = max(0, math.ceil(fix["acc"]))
    if fix.get("alt") is not None:
        msg["alt"] = round(fix["alt"])
    if fix.get("spd") is not None:
        msg["vel"] = round(fix["spd"] * 3.6)
    if fix.get("crs") is not None:
        msg["cog"] = round(fix["crs"]) % 360
    if battery and battery.get("pct") is not None:
        msg["batt"] = round(battery["pct"])
        msg["bs"] = {"discharging": 1, "not charging": 1, "charging": 2, "full": 3}.get(
            str(battery.get("status", "")).lower(), 0
        )
    if trigger:
        msg["t"] = trigger
    if tag:
        msg["tag"] = tag
    return msg


# -- decoding (receivers, tests, drills) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """A record as a receiver reads it back."""

    box: str
    seq: int
    kind: str
    t: float
    data: dict[str, Any]
    session: str | None = None
    drill: bool = False
    #: when the record expires (the message's ``exp``), if known
    exp: float | None = None


def decode_track(payload: bytes) -> list[Received]:
    """The records of a ``track`` message. Raises :class:`ValueError` for anything that is
    not one (a receiver logs it and goes on)."""
    try:
        return _decode_track(payload)
    except (KeyError, TypeError, IndexError, AttributeError, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a track message: {type(exc).__name__}: {exc}") from None


def _decode_track(payload: bytes) -> list[Received]:
    msg = json.loads(payload)
    if msg.get("v") != WIRE_VERSION:
        raise ValueError(f"unknown track version {msg.get('v')!r}")
    box, sess, drill, exp = (
        msg["box"],
        msg.get("sess"),
        bool(msg.get("drill", False)),
        msg.get("exp"),
    )
    out: list[Received] = []
    seq = t_ms = lat = lon = 0
    for i, row in enumerate(msg.get("fix", [])):
        if i == 0:
            seq, t_ms, lat, lon = row[0], round(row[1] * 1000), _micro(row[2]), _micro(row[3])
        else:
            seq, t_ms = seq + row[0], t_ms + round(row[1] * 1000)
            lat, lon = lat + row[2], lon + row[3]
        fix: dict[str, Any] = {"lat": lat / MICRO, "lon": lon / MICRO}
        for key, value in zip(("alt", "spd", "crs", "acc"), row[4:], strict=False):
            if value is not None:
                fix[key] = value
        out.append(Received(box, seq, "fix", t_ms / 1000, {"fix": fix}, sess, drill, exp))
    for i, row in enumerate(msg.get("bat", [])):
        if i == 0:
            seq, t_ms = row[0], round(row[1] * 1000)
        else:
            seq, t_ms = seq + row[0], t_ms + round(row[1] * 1000)
        b = {k: v for k, v in zip(_BATTERY_KEYS, row[2:], strict=False) if v is not None}
        out.append(Received(box, seq, "battery", t_ms / 1000, {"battery": b}, sess, drill, exp))
    for g in msg.get("gap", []):
        data = {k: v for k, v in g.items() if k not in ("seq", "t")}
        out.append(Received(box, g["seq"], "gap", g["t"], data, sess, drill, exp))
    for e in msg.get("ev", []):
        data = {k: v for k, v in e.items() if k not in ("seq", "t", "kind")}
        out.append(Received(box, e["seq"], e["kind"], e["t"], data, sess, drill, exp))
    return sorted(out, key=lambda r: r.seq)


def decode_sos(payload: bytes) -> Received:
    """The record of an ``sos`` message; :class:`ValueError` if it is not one."""
    try:
        m = json.loads(payload)
        if m.get("v") != WIRE_VERSION:
            raise ValueError(f"unknown sos version {m.get('v')!r}")
        r = Received(
            m["box"], m["seq"], m["kind"], m["t"], m["data"], m["sess"], m["drill"], m.get("exp")
        )
    except (KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not an sos message: {type(exc).__name__}: {exc}") from None
    if not (isinstance(r.box, str) and isinstance(r.seq, int) and isinstance(r.data, dict)):
        raise ValueError("not an sos message: box, seq or data of the wrong type")
    return r


@dataclass
class SeqLedger:
    """The receiver's proof: every ``seq`` from 1 to the highest seen is either received
    or named by a ``gap`` record (deliberately removed); anything else is a loss.
    Duplicates (a resend after a reconnect) are counted, not double-counted."""

    seen: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    duplicates: int = 0

    def add(self, records: Iterable[Received]) -> None:
        for r in records:
            if r.seq in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(r.seq)
            if r.kind == RecordKind.GAP.value:
                for a, b in gap_ranges(r.data.get("ranges")):
                    self.removed.update(range(a, b + 1))

    @property
    def last(self) -> int:
        return max(self.seen, default=0)

    def missing(self) -> list[int]:
        accounted = self.seen | self.removed
        return [s for s in range(1, self.last + 1) if s not in accounted]


#: the largest seq taken seriously (a device would need 285 years at 1,000 records/s)
MAX_SEQ = 2**53


def gap_ranges(value: Any) -> list[list[int]]:
    """The well-formed ``[first, last]`` pairs of a gap notice's ``ranges``, as received:
    anything else in it is dropped, never trusted."""
    out: list[list[int]] = []
    if isinstance(value, list):
        for r in value[:10_000]:
            if (
                isinstance(r, list | tuple)
                and len(r) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                and 1 <= r[0] <= r[1] <= MAX_SEQ
            ):
                out.append([r[0], r[1]])
    return out


# -- commands ----------------------------------------------------------------------------


class CommandName(enum.StrEnum):
    ACK = "ack"
    CANCEL = "cancel"
    DRILL = "drill"
    LOCATE_NOW = "locate-now"
    VOICE_NOW = "voice-now"


class CommandError(SosbeaconError, ValueError):
    """A command that cannot be accepted; the message is sent back to the sender."""


@dataclass(frozen=True, slots=True)
class Command:
    name: CommandName
    #: the sender's id for the command, echoed in the reply; repeats are not re-run
    id: str | None = None
    #: who sent it (shown with an acknowledgement)
    by: str | None = None
    #: the SOS session the command is meant for; a stale command for an earlier
    #: session is refused instead of acting on the current one
    session: str | None = None
    #: set by the device itself, never read from the wire: the acknowledging contact's
    #: place in the SOS's contacts, and how they answered (``sms``)
    contact: int | None = None
    via: str | None = None


MAX_COMMAND_BYTES = 4096
_COMMAND_FIELDS = {"cmd", "id", "by", "session"}


def parse_command(payload: bytes) -> Command:
    """Validate a ``cmd`` payload: ``{"cmd": "ack"|"cancel"|"drill"|"locate-now",
    "id"?: str, "by"?: str, "session"?: str}``. Raises :class:`CommandError`."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command too long ({len(payload)} bytes, at most {MAX_COMMAND_BYTES})")
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    except RecursionError:
        raise CommandError("not a command: nested too deeply") from None
    if not isinstance(msg, dict):
        raise CommandError('a command is a JSON object like {"cmd": "ack"}')
    unknown = set(msg) - _COMMAND_FIELDS
    if unknown:
        allowed = sorted(_COMMAND_FIELDS)
        raise CommandError(f"unknown field(s) {sorted(unknown)}; allowed: {allowed}")
    name = msg.get("cmd")
    try:
        cmd = CommandName(str(name))
    except ValueError:
        names = ", ".join(c.value for c in CommandName)
        raise CommandError(f"unknown command {name!r}; one of: {names}") from None
    texts: dict[str, str | None] = {}
    for key in ("id", "by", "session"):
        v = msg.get(key)
        if v is not None and not _command_text(v):
            raise CommandError(f"{key!r} must be a string of 1 to 64 characters")
        texts[key] = v
    return Command(cmd, texts["id"], texts["by"], texts["session"])


def command_id(payload: bytes) -> str | None:
    """The ``id`` of a command payload if it has a valid one, even when the command
    itself is refused (read again only then): the refusal names what it refuses."""
    try:
        msg = json.loads(payload) if len(payload) <= MAX_COMMAND_BYTES else None
    except (ValueError, RecursionError):
        return None
    v = msg.get("id") if isinstance(msg, dict) else None
    return v if _command_text(v) else None


def _command_text(v: object) -> bool:
    """An ``id``, ``by`` or ``session`` of a command: a string of 1 to 64 characters."""
    return isinstance(v, str) and 0 < len(v) <= 64


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive seqs, inclusive: ``[5, 3, 4, 9]`` gives ``[(3, 5), (9, 9)]``
    (any order, repeats ignored)."""
    ordered = sorted(set(seqs))
    if not ordered:
        return []
    if ordered[-1] - ordered[0] == len(ordered) - 1:  # the common case: one run
        return [(ordered[0], ordered[-1])]
    out = [(ordered[0], ordered[0])]
    for s in ordered[1:]:
        if s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def seq_ranges_text(seqs: Iterable[int]) -> str:
    """``"3-7,9"``: the seqs of a message, for its ``seq`` user property."""
    return ranges_text(seq_ranges(seqs))


def ranges_text(ranges: Iterable[Sequence[int]]) -> str:
    """``"3-7,9"`` from ``[(3, 7), (9, 9)]``."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def parse_ranges_text(text: str) -> list[tuple[int, int]]:
    """``[(3, 7), (9, 9)]`` from ``"3-7,9"`` (``""``: none); ValueError when it is not
    such a list."""
    out: list[tuple[int, int]] = []
    for part in text.split(",") if text else ():
        a, sep, b = part.partition("-")
        lo, hi = int(a), int(b) if sep else int(a)
        if lo < 0 or hi < lo:
            raise ValueError(f"not a seq range: {part!r}")
        out.append((lo, hi))
    return out


# -- contact addresses (sos-start's contacts[].reach) -------------------------------------

_EMAIL = re.compile(r"[^@\s:/]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{5,30}")
_SCHEMED = re.compile(r"([a-z][a-z0-9+.-]{0,31}):([^\s/@:]{1,256})")


class AddressError(SosbeaconError, ValueError):
    """A contact address that is not one (or that must not go through the broker)."""


@dataclass(frozen=True, slots=True)
class Address:
    #: the key in ``notify.services``: ``email``, ``sms`` or a scheme
    channel: str
    target: str


def parse_address(text: str) -> Address:
    """Raises :class:`AddressError` for an address that is not one of the three forms,
    and above all for one that looks like a URL with a credential in it."""
    a = text.strip()
    if "://" in a or re.search(r"[^@\s]+:[^@\s]+@", a):
        raise AddressError(
            "looks like a service URL (maybe with a password): a contact's address is an "
            "e-mail address, a phone number or scheme:id; the service's URL and its "
            "credentials go in the relay's notify.services"
        )
    if _EMAIL.fullmatch(a):
        return Address("email", a)
    if _PHONE.fullmatch(a):
        return Address("sms", "+" * a.startswith("+") + re.sub(r"\D", "", a))
    m = _SCHEMED.fullmatch(a)
    if m:
        return Address(m.group(1), m.group(2))
    raise AddressError(
        f"{a[:80]!r} is not an e-mail address, a phone number (+44 7700 900123) or "
        "scheme:id (tgram:123456, ntfy:topic)"
    )


def addresses(reach: str) -> list[str]:
    """A contact's ``reach``: one address or several, comma-separated."""
    return [a.strip() for a in reach.split(",") if a.strip()]


# -- voice notes ------------------------------------------------------------------------

#: what a chunk's message carries besides the chunk (the envelope, the clip's fields)
VOICE_ENVELOPE = 640
VOICE_CODEC = "opus"
VOICE_MIME = "audio/ogg"
#: a clip is at most this large, whatever a chunk says (the relay's guard)
MAX_CLIP_BYTES = 2 * 1024 * 1024


def chunk_size(max_payload: int) -> int:
    """Clip bytes per chunk so that its message (base64 and envelope) fits
    ``max_payload``."""
    return max(256, (max_payload - VOICE_ENVELOPE) * 3 // 4)


def split_clip(
    clip: bytes, *, clip_id: str, seconds: float, max_payload: int, why: str
) -> list[dict[str, Any]]:
    """The ``voice`` records' data for ``clip`` (Ogg Opus), in order."""
    size = chunk_size(max_payload)
    n = max(1, math.ceil(len(clip) / size))
    digest = hashlib.sha256(clip).hexdigest()
    return [
        {
            "clip": clip_id,
            "i": i,
            "n": n,
            "codec": VOICE_CODEC,
            "mime": VOICE_MIME,
            "dur": round(seconds, 2),
            "bytes": len(clip),
            "sha256": digest,
            "why": why,
            "chunk": base64.b64encode(clip[i * size : (i + 1) * size]).decode(),
        }
        for i in range(n)
    ]


class ClipError(ValueError):
    """Chunks that do not make the clip they describe."""


def join_clip(chunks: Iterable[dict[str, Any]]) -> bytes:
    """The clip from all its chunks' data (any order, duplicates allowed), checked
    against its size and SHA-256. Raises :class:`ClipError` (one missing, or forged)."""
    parts: dict[int, bytes] = {}
    first: dict[str, Any] | None = None
    for c in chunks:
        try:
            i, n, piece = int(c["i"]), int(c["n"]), base64.b64decode(c["chunk"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise ClipError(f"not a voice chunk: {exc}") from None
        first = first or c
        if (n, c.get("sha256"), c.get("bytes")) != (
            first["n"], first.get("sha256"), first.get("bytes"),
        ) or not 0 <= i < n:  # fmt: skip
            raise ClipError("chunks of different clips, or out of range")
        parts[i] = piece
    if first is None:
        raise ClipError("no chunks")
    n = int(first["n"])
    if len(parts) != n:
        raise ClipError(f"{n - len(parts)} of {n} chunk(s) missing")
    clip = b"".join(parts[i] for i in range(n))
    if len(clip) != first.get("bytes") or len(clip) > MAX_CLIP_BYTES:
        raise ClipError(f"{len(clip)} bytes, the chunks said {first.get('bytes')}")
    if hashlib.sha256(clip).hexdigest() != first.get("sha256"):
        raise ClipError("the clip does not match its SHA-256")
    return clip


# -- end-to-end encryption (optional) ----------------------------------------------------
#
# A payload on our own topics (track, sos, voice, receipt, cmd and its replies), when the
# device has a key: XSalsa20-Poly1305 (libsodium's secretbox, through PyNaCl) under a
# 32-byte key the device and the relay share, a random 24-byte nonce per message.
# Binary: MAGIC (4) ‖ key id (8) ‖ nonce (24) ‖ secretbox (16-byte tag ‖ ciphertext).
# The key id lets the relay hold a device's old and new keys while a rotation drains.
# docs/security.md says why this construction, and what stays in the clear.

SEALED_MAGIC = b"\x00SB1"
KEY_BYTES = 32
KEY_ID_BYTES = 8
SEAL_OVERHEAD = len(SEALED_MAGIC) + KEY_ID_BYTES + 24 + 16


class KeyFileError(SosbeaconError, ValueError):
    """A key file that cannot be used; the message says what to do."""


class SealError(ValueError):
    """A payload that does not open: not sealed, another key, or tampered with."""


class UnknownKeyError(SealError):
    """A sealed payload under a key id none of the keys given has."""


def key_id(key: bytes) -> bytes:
    """The key's id: 8 bytes of its BLAKE2b under a fixed personalisation (reveals
    nothing of the key)."""
    return hashlib.blake2b(key, digest_size=KEY_ID_BYTES, person=b"sosbeacon-kid").digest()


def _read_secret(p: str, what: str) -> bytes:
    """The bytes of a file holding a secret; :class:`KeyFileError` when it cannot be
    read or others may read it (:func:`device.tomlconf.too_open`)."""
    try:
        st = os.stat(p)
        with open(p, "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KeyFileError(f"{p[:200]!r}: the {what} cannot be read ({why})") from None
    loose = too_open(p, st.st_mode)
    if loose:
        raise KeyFileError(f"the {what} {loose}")
    return raw


def read_key(path: str | os.PathLike[str]) -> bytes:
    """A 32-byte key from ``path`` (raw, or 64 hex characters), refused when anyone
    but its owner may read it."""
    p = os.fspath(path)
    raw = _read_secret(p, "key file")
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return bytes.fromhex(text.decode())
    if len(raw) == KEY_BYTES:
        return raw
    raise KeyFileError(
        f"{p}: a key is 32 random bytes, or 64 hex characters (make one with: "
        f"head -c 32 /dev/urandom > {p} && chmod 600 {p})"
    )


def read_passphrase(path: str | os.PathLike[str]) -> str:
    """A passphrase, the first line of ``path``, refused like a key file when others may
    read it."""
    p = os.fspath(path)
    raw = _read_secret(p, "passphrase file")
    try:
        line = raw.decode("utf-8").split("\n", 1)[0].rstrip("\r")
    except UnicodeDecodeError:
        raise KeyFileError(f"{p[:200]!r}: the passphrase file is not UTF-8 text") from None
    if not line:
        raise KeyFileError(f"{p}: the passphrase file's first line is empty")
    return line


def seal(key: bytes, payload: bytes) -> bytes:
    """``payload`` sealed under ``key`` (a fresh random nonce)."""
    from nacl.secret import SecretBox

    box = SecretBox(key).encrypt(payload)
    return SEALED_MAGIC + key_id(key) + bytes(box)


def is_sealed(payload: bytes) -> bool:
    return payload.startswith(SEALED_MAGIC)


def unseal(keys: Iterable[bytes], payload: bytes) -> tuple[bytes, bytes]:
    """The plaintext of a sealed payload and the key that opened it, from ``keys``
    (the current one and any kept from before a rotation). :class:`SealError` when it
    is not sealed, no key has its id (:class:`UnknownKeyError`), or it fails to
    authenticate."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if not is_sealed(payload) or len(payload) < SEAL_OVERHEAD:
        raise SealError("not a sealed payload")
    kid = payload[len(SEALED_MAGIC) : len(SEALED_MAGIC) + KEY_ID_BYTES]
    key = next((k for k in keys if key_id(k) == kid), None)
    if key is None:
        raise UnknownKeyError(f"sealed under an unknown key (id {kid.hex()})")
    try:
        return SecretBox(key).decrypt(payload[len(SEALED_MAGIC) + KEY_ID_BYTES :]), key
    except CryptoError:
        raise SealError("does not authenticate: another key, or tampered with") from None


# -- OwnTracks' own payload encryption ---------------------------------------------------


def owntracks_key(passphrase: str) -> bytes:
    """OwnTracks' key from a passphrase: its UTF-8 bytes cut to 32 and right-padded with
    zero bytes (OwnTracks' own scheme: no key derivation; use 32 random characters)."""
    return passphrase.encode()[:KEY_BYTES].ljust(KEY_BYTES, b"\0")


def owntracks_encrypted(key: bytes, payload: bytes) -> bytes:
    """``payload`` as OwnTracks' ``{"_type":"encrypted","data":...}``: standard padded
    Base64 of nonce (24 bytes) ‖ secretbox output, as OwnTracks Recorder and Home
    Assistant's OwnTracks integration open it."""
    from nacl.secret import SecretBox

    box = SecretBox(key).encrypt(payload)  # nonce ‖ tag ‖ ciphertext
    return dumps({"_type": "encrypted", "data": base64.b64encode(bytes(box)).decode()})


def owntracks_open(key: bytes, message: bytes) -> bytes:
    """The payload inside an OwnTracks ``{"_type":"encrypted"}`` message (the inverse of
    :func:`owntracks_encrypted`, as an OwnTracks consumer opens it). :class:`SealError`
    when it is not such a message or does not authenticate under ``key``."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        outer = json.loads(message)
    except ValueError:
        raise SealError("not JSON") from None
    if not isinstance(outer, dict) or outer.get("_type") != "encrypted":
        raise SealError("not an OwnTracks encrypted message")
    if not isinstance(outer.get("data"), str):
        raise SealError("an OwnTracks encrypted message with no data")
    try:
        return SecretBox(key).decrypt(base64.b64decode(outer["data"], validate=True))
    except (ValueError, CryptoError):
        raise SealError("does not authenticate: another passphrase, or tampered with") from None
