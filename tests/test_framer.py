"""Framing a hostile byte stream: garbage, binary frames, glued and partial lines."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sosbeacon.hw.nmea import NmeaDecoder, NmeaFramer
from sosbeacon.hw.nmea.framer import MAX_SENTENCE
from sosbeacon.hw.nmea.sentences import build_sentence as sentence
from sosbeacon.hw.ubx import ubx_frame

GOOD = [
    sentence("GNRMC,101500.00,A,5557.14961,N,00310.34842,W,2.721,121.85,221126,,,A"),
    sentence("GNGGA,101500.00,5557.14961,N,00310.34842,W,1,09,1.00,60.2,M,47.0,M,,"),
    sentence("GNGSA,A,3,01,02,03,04,05,06,07,08,09,,,,1.60,1.00,1.30"),
]
STREAM = b"".join(GOOD)


def frames(data: bytes) -> list[bytes]:
    f = NmeaFramer()
    return f.feed(data) + f.flush()


def test_clean_stream() -> None:
    assert frames(STREAM) == [g.rstrip() for g in GOOD]


def test_partial_line_at_power_up_does_not_cost_the_next_sentence() -> None:
    got = frames(b"57.14961,N,00310.34842,W,2.7*1A\r\n" + STREAM)
    assert got == [g.rstrip() for g in GOOD]


def test_glued_sentences_are_split() -> None:
    got = frames(GOOD[0].rstrip() + GOOD[1])
    assert got == [GOOD[0].rstrip(), GOOD[1].rstrip()]


def test_binary_frame_with_dollar_inside_is_skipped() -> None:
    ubx = ubx_frame(1, 7, b"\x00\x24\x10\r\n\xff" * 10)
    dec = NmeaDecoder()
    fixes = dec.feed(GOOD[0] + ubx + GOOD[1] + GOOD[2]) + dec.flush()
    assert len(fixes) == 1 and fixes[0].has_position
    assert dec.stats.sentences == 3
    assert dec.stats.noise_bytes > 0


def test_runaway_line_is_dropped_and_memory_stays_bounded() -> None:
    f = NmeaFramer()
    for _ in range(1000):
        assert f.feed(b"$" + b"A" * 999) == []
    assert len(f._buf) <= 200
    assert f.feed(b"\r\n" + GOOD[0]) == [GOOD[0].rstrip()]


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    f = NmeaFramer()
    points = sorted(set(cuts))
    got: list[bytes] = []
    prev = 0
    for p in [*points, len(STREAM)]:
        got.extend(f.feed(STREAM[prev:p]))
        prev = p
    got.extend(f.flush())
    assert got == [g.rstrip() for g in GOOD]


def test_counters_accumulate_across_decoders_sharing_stats() -> None:
    """The serial source starts a fresh decoder on every reconnect but keeps one set of
    counters: noise seen before a reconnect must still be counted after it."""
    from sosbeacon.device.gps import GpsStats

    stats = GpsStats()
    for _ in range(2):
        d = NmeaDecoder(stats=stats)
        d.feed(b"\xb5\x62\x01\x02\x03" + GOOD[0])
    assert stats.noise_bytes == 10
    assert stats.sentences == 2


def _reference_frames(data: bytes) -> tuple[list[bytes], int]:
    """The framer's rule written the plain way, one candidate at a time: every start
    character opens a candidate that ends at a line end or the next start; a candidate
    longer than MAX_SENTENCE, and any byte outside a candidate but line ends, is
    garbage; the last candidate, unterminated, is what flush() hands over."""
    out: list[bytes] = []
    garbage = 0
    pos = 0
    for m in re.finditer(rb"[$!][^\r\n$!]*", data):
        gap = data[pos : m.start()]
        garbage += len(gap) - gap.count(b"\r") - gap.count(b"\n")
        if m.end() - m.start() <= MAX_SENTENCE:
            out.append(m.group())
        else:
            garbage += m.end() - m.start()
        pos = m.end()
    gap = data[pos:]
    return out, garbage + len(gap) - gap.count(b"\r") - gap.count(b"\n")


@given(
    st.lists(
        st.sampled_from([*GOOD, b"$", b"!", b"\r", b"\n", b"*", b"x" * 170, b"\xb5b\x01"]),
        max_size=30,
    ),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_the_framer_cuts_and_counts_as_the_plain_rule_does(
    pieces: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(pieces)
    f = NmeaFramer()
    got: list[bytes] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        got += f.feed(data[last:cut])
        last = cut
    got += f.feed(data[last:])
    got += f.flush()
    assert (got, f.garbage_bytes) == _reference_frames(data)
