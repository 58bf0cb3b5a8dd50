"""Merging sentences into fixes: void rules, epoch boundaries, dates you cannot trust."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from sosbeacon.device.gps import Fix, FixMode, FixQuality, TimeIssue
from sosbeacon.hw.nmea import NmeaDecoder
from sosbeacon.hw.nmea.sentences import build_sentence as sentence

FLOOR = date(2025, 1, 1)


def decode(*bodies: str, flush: bool = True, today: date = date(2026, 11, 22)) -> list[Fix]:
    d = NmeaDecoder(date_floor=FLOOR, today=lambda: today)
    out: list[Fix] = []
    for b in bodies:
        out.extend(d.feed(sentence(b)))
    if flush:
        out.extend(d.flush())
    return out


RMC = "GPRMC,101500.00,A,5557.14961,N,00310.34842,W,2.721,121.85,221126,,,A"
GGA = "GPGGA,101500.00,5557.14961,N,00310.34842,W,1,09,1.00,60.2,M,47.0,M,,"
GSA = "GPGSA,A,3,01,02,03,04,05,06,07,08,09,,,,1.60,1.00,1.30"
VTG = "GPVTG,121.85,T,,M,2.721,N,5.040,K,A"


def test_one_fix_per_epoch_with_every_field() -> None:
    (fix,) = decode(RMC, VTG, GGA, GSA)
    assert fix.time == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    assert fix.lat == pytest.approx(55 + 57.14961 / 60)
    assert fix.lon == pytest.approx(-(3 + 10.34842 / 60))
    assert fix.alt == 60.2
    assert fix.speed == pytest.approx(2.721 * 1852 / 3600, abs=1e-3)
    assert fix.course == 121.85
    assert fix.mode is FixMode.THREE_D
    assert fix.quality is FixQuality.GPS
    assert fix.sats == 9
    assert fix.hdop == 1.0
    assert fix.accuracy == 5.0  # HDOP x 5 m UERE for a plain GPS fix
    assert fix.time_issue is None


@pytest.mark.parametrize(
    "void",
    [
        "GPRMC,101500.00,V,5557.14961,N,00310.34842,W,2.721,121.85,221126,,,A",
        "GPRMC,101500.00,A,5557.14961,N,00310.34842,W,2.721,121.85,221126,,,N",
        "GPGGA,101500.00,5557.14961,N,00310.34842,W,0,09,1.00,60.2,M,47.0,M,,",
        "GPGSA,A,1,01,02,03,,,,,,,,,,1.60,1.00,1.30",
        "GPGLL,5557.14961,N,00310.34842,W,101500.00,V,A",
        "GPGLL,5557.14961,N,00310.34842,W,101500.00,A,N",
    ],
)
def test_a_void_flag_anywhere_in_the_epoch_means_no_position(void: str) -> None:
    (fix,) = decode(RMC, GGA, void)
    assert not fix.has_position
    assert fix.mode is FixMode.NONE
    assert fix.lat is None and fix.lon is None and fix.speed is None


def test_zeroed_void_fix_has_no_position() -> None:
    (fix,) = decode(
        "GPRMC,101500.00,V,0000.00000,N,00000.00000,E,0.000,0.00,221126,,,N",
        "GPGGA,101500.00,0000.00000,N,00000.00000,E,0,00,99.99,0.0,M,0.0,M,,",
    )
    assert not fix.has_position


def test_gga_without_satellites_is_void_unless_gsa_vouches() -> None:
    coasting = "GPGGA,101500.00,5557.14961,N,00310.34842,W,1,00,3.3,60.2,M,47.0,M,,"
    (fix,) = decode(coasting)
    assert not fix.has_position
    (fix,) = decode(coasting, "GPGSA,A,2,,,,,,,,,,,,,2.7,2.5,1.0")
    assert fix.has_position
    assert fix.mode is FixMode.TWO_D


def test_epoch_is_emitted_at_its_learned_end_without_waiting_for_the_next() -> None:
    d = NmeaDecoder(date_floor=FLOOR)
    first = [f for b in (RMC, VTG, GGA, GSA) for f in d.feed(sentence(b))]
    assert first == []  # the cycle's end is not known yet
    second_rmc = RMC.replace("101500.00", "101501.00")
    out = d.feed(sentence(second_rmc))
    assert len(out) == 1  # the first epoch closes when the time changes; GSA is learnt
    out = []
    for b in (VTG, GGA.replace("101500.00", "101501.00")):
        out.extend(d.feed(sentence(b)))
    assert out == []
    (fix,) = d.feed(sentence(GSA))  # the learned end: no need to wait for epoch 3
    assert fix.time is not None and fix.time.second == 1


def test_reused_timestamp_with_new_position_is_a_new_fix() -> None:
    a = "GPGGA,094736,5251.0094,N,00518.8172,E,1,12,0.60,-4,M,46.8,M,,"
    b = "GPGLL,5251.0093,N,00518.8170,E,094736,A,A"
    fixes = decode(a, b)
    assert [round(f.lat or 0, 6) for f in fixes] == [52.850157, 52.850155]


def test_coarser_copy_of_the_same_position_is_the_same_fix() -> None:
    fine = "GPGGA,101500.00,5557.149614,N,00310.348421,W,1,09,1.00,60.2,M,47.0,M,,"
    coarse = "GPRMC,101500.00,A,5557.1496,N,00310.3484,W,2.721,121.85,221126,,,A"
    (fix,) = decode(coarse, fine)
    assert fix.lat == pytest.approx(55 + 57.149614 / 60, abs=1e-9)


def test_week_rollover_date_is_flagged() -> None:
    # 1024 weeks before 2019-04-07 a receiver with an old firmware says 1999-08-22.
    (fix,) = decode(RMC.replace("221126", "220899"))
    assert fix.has_position  # the position is fine; the date is not
    assert fix.time_issue is TimeIssue.BEFORE_FLOOR
    assert fix.time is not None and fix.time.year == 1999


def test_unparseable_date_is_flagged() -> None:
    (fix,) = decode("GPRMC,000231.099,A,4829.0005,N,00022.0015,E,0.15,212.28,2208-1,,,A")
    assert fix.has_position
    assert fix.time_issue is TimeIssue.BAD_DATE


def test_time_without_any_date_is_flagged_and_uses_the_system_date() -> None:
    (fix,) = decode(GGA)
    assert fix.time_issue is TimeIssue.NO_DATE
    assert fix.time == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


def test_date_carries_over_midnight_for_gga_only_epochs() -> None:
    late = RMC.replace("101500.00", "235959.00")
    after = GGA.replace("101500.00", "000000.00")
    fixes = decode(late, after)
    assert fixes[1].time == datetime(2026, 11, 23, 0, 0, 0, tzinfo=UTC)
    assert fixes[1].time_issue is None


def test_zda_gives_the_date() -> None:
    (fix,) = decode(GGA, "GPZDA,101500.00,22,11,2026,00,00")
    assert fix.time == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    assert fix.time_issue is None


def test_gst_gives_the_accuracy() -> None:
    (fix,) = decode(GGA, "GPGST,101500.00,1.2,3.0,2.0,45.0,3.0,4.0,5.0")
    assert fix.accuracy == 5.0


def test_untimed_void_sentence_does_not_poison_the_next_epoch() -> None:
    fixes = decode("GPRMC,,V,,,,,,,,,,N", RMC)
    assert [f.has_position for f in fixes] == [False, True]


def test_old_vtg_layout_without_unit_letters() -> None:
    (fix,) = decode(GGA, "GPVTG,054.7,034.4,005.5,010.2")
    assert fix.course == 54.7
    assert fix.speed == pytest.approx(5.5 * 1852 / 3600, abs=1e-3)


@pytest.mark.parametrize(
    ("sats", "hdop"), [("-5", "-0.9"), ("09", "0.00"), ("09", "99.99"), ("09", "150.0")]
)
def test_impossible_hdop_or_satellites_never_make_a_fix_more_accurate(sats: str, hdop: str) -> None:
    gga = f"GPGGA,101500.00,5557.14961,N,00310.34842,W,1,{sats},{hdop},60.2,M,47.0,M,,"
    (fix,) = decode(RMC, VTG, gga)
    assert fix.has_position  # the position is still good ...
    assert fix.accuracy is None and fix.hdop is None  # ... its accuracy is unknown
    assert fix.sats is None or fix.sats >= 0


def test_negative_gst_sigmas_are_unknown() -> None:
    gst = "GPGST,101500.00,1.2,-0.8,0.6,45.0,-0.8,0.6,1.5"
    (fix,) = decode(RMC, VTG, GGA, gst)
    assert fix.accuracy is None or fix.accuracy >= 0
    assert fix.accuracy != pytest.approx(1.0)  # hypot(-0.8, 0.6) would claim 1 m
