"""The wire formats: the compact track batch round-trips, is small, OwnTracks messages
validate against the real schema, commands are validated, the ledger finds gaps."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosbeacon.device.records import FixRun, Item, Priority, Record, RecordKind, Stored
from sosbeacon.device.wire import (
    CommandError,
    CommandName,
    Received,
    SeqLedger,
    Topics,
    decode_sos,
    decode_track,
    dumps,
    encode_sos,
    encode_track,
    owntracks_location,
    parse_command,
    row_delta,
    seq_ranges_text,
    track_row,
)
from tests.mqtt_env import T0, fix_record


def stored(pairs: list[tuple[int, Record]], *, rows: bool = False) -> list[Stored]:
    """As the outbox hands records out: with their track rows worked out at storing
    (``rows``), or without, for records stored before the rows were kept."""
    return [Stored(seq, None, r, track_row(r) if rows else None) for seq, r in pairs]


class Undecodable(Stored):
    """A stored record whose JSON must not be decoded (the drain's promise)."""

    __slots__ = ()

    def __init__(self, seq: int, r: Record) -> None:
        super().__init__(seq, None, r, track_row(r))
        self._record = None

    def _load(self) -> Record:
        raise AssertionError(f"record {self.seq} was decoded")


def runs(pairs: list[tuple[int, Record]], size: int) -> list[Item]:
    """As a drain hands fixes out: runs of ``size`` (the last may be shorter), each fix
    after a run's first as its stored row difference; only the ends can be decoded."""
    out: list[Item] = []
    for i in range(0, len(pairs), size):
        chunk = [Undecodable(seq, r) for seq, r in pairs[i : i + size]]
        if len(chunk) == 1:
            out.append(chunk[0])
            continue
        deltas = []
        for a, b in itertools.pairwise(chunk):
            assert a.row is not None and b.row is not None
            deltas.append(row_delta(a.seq, a.row, b.seq, b.row))
        out.append(FixRun(chunk[0], chunk[-1], [s.seq for s in chunk], deltas))
    return out


fixes = st.fixed_dictionaries(
    {
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "dt": st.integers(0, 10_000),  # ms since the previous fix
    },
    optional={
        "alt": st.floats(-400, 9000),
        "spd": st.floats(0, 300),
        "crs": st.floats(0, 359.9),
        "acc": st.floats(0, 5000),
    },
)


@given(st.lists(fixes, min_size=1, max_size=40), st.integers(1, 10**9), st.integers(1, 9))
def test_track_round_trip(rows: list[dict[str, Any]], seq0: int, run: int) -> None:
    records: list[tuple[int, Record]] = []
    t = T0
    for i, row in enumerate(rows):
        t += timedelta(milliseconds=row["dt"])
        fix = {k: v for k, v in row.items() if k != "dt"}
        fix["t"] = t.isoformat()
        records.append(
            (seq0 + 2 * i, Record(RecordKind.FIX, t, {"fix": fix}, Priority.LIVE, "s", True))
        )
    payload = encode_track("box1", stored(records))
    assert encode_track("box1", stored(records, rows=True)) == payload
    assert encode_track("box1", [Undecodable(seq, r) for seq, r in records]) == payload
    in_runs = runs(records, run)
    assert encode_track("box1", in_runs) == payload  # joined from the stored differences
    if isinstance(in_runs[0], FixRun):  # cut in two (too large for the broker): the same
        k = len(in_runs[0].seqs) // 2
        ends = [Undecodable(seq, r) for seq, r in records[k - 1 : k + 1]]
        assert encode_track("box1", [*in_runs[0].halves(*ends), *in_runs[1:]]) == payload
    assert dumps(json.loads(payload)) == payload  # compact JSON, as json.dumps writes it
    got = decode_track(payload)
    assert [g.seq for g in got] == [s for s, _ in records]
    for g, (_, r) in zip(got, records, strict=True):
        want = r.data["fix"]
        assert g.box == "box1" and g.session == "s" and g.drill
        assert g.t == pytest.approx(r.time.timestamp(), abs=1e-3)
        assert g.data["fix"]["lat"] == pytest.approx(want["lat"], abs=5e-7)
        assert g.data["fix"]["lon"] == pytest.approx(want["lon"], abs=5e-7)
        for key, tol in (("alt", 0.5), ("spd", 0.05), ("acc", 1.0)):
            if key in want:
                assert g.data["fix"][key] == pytest.approx(want[key], abs=tol)
        if "crs" in want:
            assert abs((g.data["fix"]["crs"] - want["crs"] + 180) % 360 - 180) <= 0.5


def test_battery_gap_and_other_records_round_trip() -> None:
    records = [
        (7, fix_record(1)),
        (8, Record(RecordKind.BATTERY, T0, {"battery": {"pct": 81, "status": "discharging"}})),
        (9, Record(RecordKind.GAP, T0, {"ranges": [[2, 5]], "reason": "evicted"})),
        (10, Record(RecordKind.BATTERY, T0 + timedelta(seconds=60), {"battery": {"pct": 80}})),
    ]
    payload = encode_track("b", stored(records, rows=True))
    assert payload == encode_track("b", stored(records))
    got = {g.seq: g for g in decode_track(payload)}
    assert got[8].data == {"battery": {"pct": 81, "status": "discharging"}}
    assert got[10].data == {"battery": {"pct": 80}} and got[10].t == T0.timestamp() + 60
    assert got[9].kind == "gap" and got[9].data == {"ranges": [[2, 5]], "reason": "evicted"}
    assert got[7].kind == "fix"


def test_a_fix_costs_under_30_percent_of_an_owntracks_location() -> None:
    records = [(i + 1, fix_record(i)) for i in range(200)]
    track = len(encode_track("0123456789abcdef0123456789abcdef", stored(records, rows=True)))
    owntracks = sum(
        len(dumps(owntracks_location(r.data["fix"], at=r.time, tid="d1", battery={"pct": 80})))
        for _, r in records
    )
    assert track / owntracks <= 0.30, (track / 200, owntracks / 200)


def test_sos_message_round_trip() -> None:
    r = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1", False)
    got = decode_sos(encode_sos("b", 3, r))
    assert (got.seq, got.kind, got.session, got.data) == (3, "sos-start", "s1", {"trigger": "cli"})
    assert json.loads(encode_sos("b", 3, r))["exp"] is None  # the end is not known yet


def test_owntracks_location_validates_against_the_schema(shared_dir: Path) -> None:
    schema = json.loads((shared_dir / "owntracks-schema" / "message.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    full = fix_record(3).data["fix"]
    for fix, battery in (
        (full, {"pct": 80.4, "status": "Charging"}),
        ({"lat": 1.5, "lon": 2.5}, None),
    ):
        msg = owntracks_location(fix, at=T0, tid="dev1", battery=battery, tag="SOS")
        validator.validate(msg)
        assert msg["tid"] == "de" and msg["tst"] == int(T0.timestamp())
        assert msg.get("t") not in ("s", "!")
    # and the validator is a real check: the schema's own bad example fails it
    bad = json.loads(
        (shared_dir / "owntracks-schema" / "examples" / "location-lat-missing.json").read_text()
    )
    assert not validator.is_valid(bad)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"cmd": "selfdestruct"}', "unknown command"),
        (b'{"cmd": "ack", "extra": 1}', "unknown field"),
        (b'{"cmd": "ack", "id": 5}', "'id' must be a string"),
        (b'{"cmd": "ack", "by": ""}', "'by' must be a string"),
        (b'{"cmd": "ack", "by": "' + b"x" * 5000 + b'"}', "too long"),
        (b"", "not JSON"),
    ],
)
def test_malformed_commands_are_rejected_with_a_reason(payload: bytes, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        parse_command(payload)


def test_valid_commands_parse() -> None:
    c = parse_command(b'{"cmd":"locate-now","id":"c1","by":"Alice","session":"s1"}')
    assert (c.name, c.id, c.by, c.session) == (CommandName.LOCATE_NOW, "c1", "Alice", "s1")


@given(st.binary(max_size=200))
def test_no_payload_crashes_the_parser(payload: bytes) -> None:
    try:
        cmd = parse_command(payload)
    except CommandError as exc:
        reason = str(exc)
        assert reason  # refused, with a reason for the sender
    else:
        assert isinstance(cmd.name, CommandName)


def test_ledger_counts_gaps_duplicates_and_deliberate_removal() -> None:
    def rec(seq: int, kind: str = "fix", **data: Any) -> Received:
        return Received("b", seq, kind, 0.0, data)

    led = SeqLedger()
    led.add([rec(1), rec(2), rec(2), rec(5)])
    assert led.missing() == [3, 4] and led.duplicates == 1
    led.add([rec(6, "gap", ranges=[[3, 3]], reason="evicted")])
    assert led.missing() == [4]
    led.add([rec(4)])
    assert led.missing() == [] and led.last == 6


def test_seq_ranges_and_topics() -> None:
    assert seq_ranges_text([5, 3, 4, 9, 11, 10]) == "3-5,9-11"
    assert seq_ranges_text([7]) == "7"
    t = Topics.for_device("dev1")
    assert (t.track, t.sos, t.status, t.cmd) == (
        "sosbeacon/dev1/track",
        "sosbeacon/dev1/sos",
        "sosbeacon/dev1/status",
        "sosbeacon/dev1/cmd",
    )
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError, match="device id"):
            Topics.for_device(bad)


def test_a_record_that_does_not_fit_a_row_is_still_sent_whole() -> None:
    odd = [
        (1, Record(RecordKind.FIX, T0, {"fix": {"lat": None, "lon": 3.0}})),
        (2, Record(RecordKind.FIX, T0, {"fix": {"lat": 1.0, "lon": 2.0, "alt": "high"}})),
        (3, Record(RecordKind.BATTERY, T0, {"battery": "n/a"})),
        (4, Record(RecordKind.FIX, T0, {"fix": None})),
    ]
    assert [track_row(r) is None for _, r in odd] == [True, False, True, True]
    got = {g.seq: g for g in decode_track(encode_track("b", stored(odd)))}
    assert sorted(got) == [1, 2, 3, 4]  # every seq reaches the receiver
    assert got[1].data == {"fix": {"lat": None, "lon": 3.0}}
    assert got[2].data["fix"] == {"lat": 1.0, "lon": 2.0}  # the unusable altitude dropped
    assert got[3].data == {"battery": "n/a"}
