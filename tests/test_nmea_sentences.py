"""Sentence validation and field decoding, checked against pynmeagps on real captures."""

from __future__ import annotations

from pathlib import Path

import pynmeagps
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosbeacon.hw.nmea.sentences import (
    Reject,
    Sentence,
    checksum,
    parse_latlon,
    parse_tod,
    split_sentence,
)
from sosbeacon.hw.nmea.sentences import build_sentence as sentence


def corpus_lines(gpsd_logs: Path) -> list[bytes]:
    out: list[bytes] = []
    for log in sorted(gpsd_logs.glob("*.log")):
        for line in log.read_bytes().splitlines():
            line = line.strip()
            if line.startswith(b"$"):
                out.append(line)
    return out


def test_checksum_verdict_agrees_with_pynmeagps_on_every_corpus_line(gpsd_logs: Path) -> None:
    lines = corpus_lines(gpsd_logs)
    assert len(lines) > 10_000
    disagreements = []
    for line in lines:
        star = line.rfind(b"*")
        ours = split_sentence(line) not in (Reject.BAD_CHECKSUM, Reject.NO_CHECKSUM, Reject.GARBAGE)
        if star < 0 or len(line) - star - 1 != 2:
            theirs = False
        else:
            try:
                body = line[1:star].decode("ascii")
            except UnicodeDecodeError:
                theirs = False
            else:
                theirs = pynmeagps.calc_checksum(body) == line[star + 1 :].decode().upper()
        if ours != theirs:
            disagreements.append(line)
    assert disagreements == []


def test_positions_agree_with_pynmeagps(gpsd_logs: Path) -> None:
    compared = 0
    for line in corpus_lines(gpsd_logs):
        s = split_sentence(line)
        if not isinstance(s, Sentence) or s.kind not in ("RMC", "GGA", "GLL"):
            continue
        ours_lat = parse_latlon(s.get("lat"), s.get("ns"), 2)
        ours_lon = parse_latlon(s.get("lon"), s.get("ew"), 3)
        if ours_lat is None or ours_lon is None:
            continue
        msg = pynmeagps.NMEAReader.parse(line)
        assert msg is not None
        assert ours_lat == pytest.approx(msg.lat, abs=1e-9), line
        assert ours_lon == pytest.approx(msg.lon, abs=1e-9), line
        compared += 1
    assert compared > 2500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"$GPGGA,1,2,3", Reject.NO_CHECKSUM),
        (b"$GPRMC,120000,A*00", Reject.BAD_CHECKSUM),
        (b"$GPRMC,120000,A*Z1", Reject.BAD_CHECKSUM),
        (b"$GPRMC,12\xb5\x62,A*00", Reject.GARBAGE),
        (sentence("GPGSV,1,1,00").rstrip(), Reject.UNKNOWN),
        (sentence("PUBX,00,1").rstrip(), Reject.UNKNOWN),
    ],
)
def test_rejections(raw: bytes, reason: Reject) -> None:
    assert split_sentence(raw) is reason


def test_lowercase_checksum_is_accepted() -> None:
    body = b"GPGLL,4916.45,N,12311.12,W,225444,A"
    raw = b"$" + body + b"*" + (b"%02x" % checksum(body))
    s = split_sentence(raw)
    assert isinstance(s, Sentence)
    assert (s.talker, s.kind) == ("GP", "GLL")


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "GQ"])
def test_any_talker(talker: str) -> None:
    s = split_sentence(
        sentence(f"{talker}GGA,120000,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,,,").rstrip()
    )
    assert isinstance(s, Sentence)
    assert s.talker == talker
    assert s.kind == "GGA"


@pytest.mark.parametrize(
    ("value", "hemi", "digits", "expected"),
    [
        ("4807.038", "N", 2, 48 + 7.038 / 60),
        ("01131.000", "E", 3, 11 + 31 / 60),
        ("01131.000", "W", 3, -(11 + 31 / 60)),
        ("3854.5087", "S", 2, -(38 + 54.5087 / 60)),
        ("", "N", 2, None),
        ("4807.038", "", 2, None),
        ("4867.038", "N", 2, None),  # 67 minutes
        ("9507.038", "N", 2, None),  # beyond the pole
        ("48o7.038", "N", 2, None),
    ],
)
def test_parse_latlon(value: str, hemi: str, digits: int, expected: float | None) -> None:
    got = parse_latlon(value, hemi, digits)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_parse_tod() -> None:
    assert parse_tod("123519") == 12 * 3600 + 35 * 60 + 19
    assert parse_tod("000231.099") == pytest.approx(151.099)
    assert parse_tod("246000") is None
    assert parse_tod("12") is None
    assert parse_tod("") is None


@given(st.binary(max_size=300))
def test_the_checksum_is_the_xor_of_every_byte(body: bytes) -> None:
    want = 0
    for b in body:
        want ^= b
    assert checksum(body) == want
