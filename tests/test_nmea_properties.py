"""Property tests: the decoder never raises, and a sentence whose checksum is wrong never
contributes to a fix."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sosbeacon.hw.nmea import NmeaDecoder
from sosbeacon.hw.nmea.sentences import build_sentence as sentence
from sosbeacon.hw.nmea.sentences import checksum

REAL = [
    b"$GNRMC,171926.00,A,4404.14063,N,12118.85478,W,0.117,,180315,,,A*76",
    b"$GNGGA,171926.00,4404.14063,N,12118.85478,W,1,12,0.91,1147.2,M,-21.3,M,,*44",
    b"$GNGSA,A,3,01,11,31,14,22,32,04,25,03,,,,1.56,0.91,1.27*15",
    b"$GNGLL,4404.14063,N,12118.85478,W,171926.00,A,A*66",
    b"$GNVTG,,T,,M,0.117,N,0.216,K,A*3F",
    b"$GPZDA,141644.00,22,03,2002,00,00*6F",
]


def _checksum_ok(raw: bytes) -> bool:
    star = raw.rfind(b"*")
    try:
        return star > 0 and int(raw[star + 1 : star + 3], 16) == checksum(raw[1:star])
    except ValueError:
        return False


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    d = NmeaDecoder()
    d.feed(data)
    d.flush()


@settings(max_examples=300)
@given(st.lists(st.sampled_from(REAL), min_size=1, max_size=30), st.binary(max_size=40))
def test_valid_sentences_in_noise_never_raise(lines: list[bytes], noise: bytes) -> None:
    d = NmeaDecoder()
    d.feed(noise.join(line + b"\r\n" for line in lines))
    d.flush()


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(REAL),
            st.integers(min_value=1, max_value=60),  # where to mutate
            # printable replacement; '$', '!' and '*' would cut the line into new
            # candidates whose own 8-bit checksum may match by chance (1 in 256)
            st.integers(min_value=0x20, max_value=0x7E).filter(lambda b: b not in b"$!*"),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_sentences_with_wrong_checksums_never_yield_anything(
    mutations: list[tuple[bytes, int, int]],
) -> None:
    corrupted = []
    for line, pos, byte in mutations:
        star = line.rfind(b"*")
        i = 1 + pos % (star - 1)
        bad = line[:i] + bytes([byte]) + line[i + 1 :]
        assume(not _checksum_ok(bad))
        corrupted.append(bad)
    d = NmeaDecoder()
    fixes = d.feed(b"\r\n".join(corrupted) + b"\r\n") + d.flush()
    assert fixes == []
    assert d.stats.sentences == 0
    assert d.stats.bad_checksum + d.stats.garbage + d.stats.noise_bytes > 0


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_a_corrupted_sentence_never_leaks_into_a_fix(seed: int) -> None:
    """Corrupt the position in one sentence of an epoch: whatever fix comes out carries
    the position of the intact sentences, never the corrupted digits."""
    rng = random.Random(seed)
    good_rmc = "GNRMC,171926.00,A,4404.14063,N,12118.85478,W,0.117,,180315,,,A"
    good_gga = "GNGGA,171926.00,4404.14063,N,12118.85478,W,1,12,0.91,1147.2,M,-21.3,M,,"
    victim = rng.choice([0, 1])
    lines = [sentence(good_rmc), sentence(good_gga)]
    digit = rng.choice("0123456789")
    raw = lines[victim]
    i = raw.index(b"4404.14") + rng.randrange(0, 10)
    raw = raw[:i] + digit.encode() + raw[i + 1 :]
    assume(not _checksum_ok(raw.rstrip()))
    lines[victim] = raw
    d = NmeaDecoder()
    fixes = d.feed(b"".join(lines)) + d.flush()
    assert d.stats.bad_checksum == 1
    for fix in fixes:
        if fix.has_position:
            assert abs((fix.lat or 0) - (44 + 4.14063 / 60)) < 1e-9


@settings(max_examples=200)
@given(st.randoms(use_true_random=False))
def test_mutated_real_capture_never_raises(gpsd_logs: Path, rnd: random.Random) -> None:
    data = bytearray((gpsd_logs / "ublox-8.log").read_bytes()[:6000])
    for _ in range(rnd.randrange(1, 50)):
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    d = NmeaDecoder()
    for fix in d.feed(bytes(data)) + d.flush():
        if fix.has_position:
            assert -90 <= (fix.lat or 0) <= 90 and -180 <= (fix.lon or 0) <= 180


def test_remembering_repeated_sentences_changes_no_fix_and_no_counter(gpsd_logs: Path) -> None:
    """The decoder's memory of repeated lines (a lookup instead of a checksum and a
    split) gives, over every real capture and a corrupted copy of one, exactly what
    decoding every line afresh gives."""
    corrupted = bytearray((gpsd_logs / "ublox-8.log").read_bytes()[:20000])
    rnd = random.Random(5)
    for _ in range(200):
        corrupted[rnd.randrange(len(corrupted))] = rnd.randrange(256)
    inputs = [p.read_bytes() for p in sorted(gpsd_logs.glob("*.log"))] + [bytes(corrupted)]
    for data in inputs:
        with_memory, afresh = NmeaDecoder(), NmeaDecoder(repeats=0)
        got = [with_memory.feed(data[i : i + 300]) for i in range(0, len(data), 300)]
        want = [afresh.feed(data[i : i + 300]) for i in range(0, len(data), 300)]
        assert [*got, with_memory.flush()] == [*want, afresh.flush()]
        assert with_memory.stats == afresh.stats
    assert with_memory.stats.bad_checksum > 0  # the corruption reached the checksums
