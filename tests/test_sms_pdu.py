"""SMS PDUs (3GPP TS 23.038 / 23.040), our own codec: checked against published
examples and by round trips over any text."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sosbeacon.hw.modem import pdu
from sosbeacon.hw.modem.pdu import Coding, Part


def test_septets_pack_as_the_standard_shows() -> None:
    assert pdu.pack7(pdu.gsm7_septets("hellohello") or []).hex().upper() == "E8329BFD4697D9EC37"
    assert pdu.pack7(pdu.gsm7_septets("How are you?") or []).hex().upper() == (
        "C8F71D14969741F977FD07"
    )
    assert pdu.gsm7_text(pdu.unpack7(bytes.fromhex("C8F71D14969741F977FD07"), 12)) == (
        "How are you?"
    )


def test_a_received_message_from_a_modem_reads() -> None:
    got = pdu.read_deliver(
        bytes.fromhex("07916407058099F9040B916407950303F100008921222140140004D4E2940A")
    )
    assert got.sender == "+46705930301" and got.text == "TEST" and got.concat is None
    assert (got.at.month, got.at.day, got.at.hour, got.at.minute, got.at.second) == (
        12, 22, 12, 4, 41,
    )  # fmt: skip


def test_the_alphabet_is_chosen_by_the_text() -> None:
    assert pdu.split("Sam needs help at 55.95240,-3.17235", 1)[0].coding is Coding.GSM7
    euro = pdu.split("cost 5€ {ok}", 1)[0]
    assert euro.coding is Coding.GSM7 and len(euro.units) == len("cost 5€ {ok}") + 3  # escapes
    assert pdu.split("Zoë ćwiczy 🙂", 1)[0].coding is Coding.UCS2


def test_long_texts_are_cut_without_splitting_an_escape_or_a_surrogate_pair() -> None:
    gsm = "a" * 152 + "€" + "b" * 10  # the escape of € would fall on the 153rd septet
    parts = pdu.split(gsm, 7)
    assert [p.concat for p in parts] == [(7, 2, 1), (7, 2, 2)]
    assert parts[0].units[-1] != pdu.ESC and len(parts[0].units) == 152
    ucs = "ж" * 66 + "🙂" + "ж" * 10  # the high half would be the 67th unit
    parts = pdu.split(ucs, 8)
    assert len(parts[0].units) == 66 and 0xD800 <= parts[1].units[0] <= 0xDBFF
    with pytest.raises(pdu.PduError, match="too long"):
        pdu.split("x" * 153 * 256, 1)


def test_a_phone_number_is_an_address_and_anything_else_is_refused() -> None:
    # 12 digits, international, then the digits in swapped pairs: 44 77 00 90 01 23
    assert pdu.encode_number("+44 7700 900123").hex().upper() == "0C91447700091032"
    assert pdu.encode_number("+441").hex().upper() == "039144F1"  # odd: padded with F
    assert pdu.encode_number("07700900123").hex()[:4] == "0b81"  # national: type 0x81
    for bad in ("", "+", "alice@example.org", "12a4", "+" + "1" * 21):
        with pytest.raises(pdu.PduError):
            pdu.encode_number(bad)


GSM_TEXT = st.text(
    alphabet=st.sampled_from(list(pdu.GSM7.replace("\x1b", "")) + list("€[]{}^~\\|"))
)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=400)
NUMBERS = st.from_regex(r"\+?[0-9]{3,15}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.one_of(GSM_TEXT, ANY_TEXT), NUMBERS, st.integers(0, 255), st.booleans())
def test_any_text_goes_out_and_reads_back_whole(
    text: str, number: str, ref: int, report: bool
) -> None:
    parts = pdu.split(text, ref)
    back = []
    for n, part in enumerate(parts, 1):
        raw = pdu.submit(number, part, report=report)
        udl_at = 2 + 2 + (len(number.lstrip("+")) + 1) // 2 + 3
        assert len(raw) - udl_at - 1 <= pdu.UD_OCTETS  # the user data fits one message
        got = pdu.read_submit(raw)
        assert got.to == number and got.report is report
        assert got.concat == (None if len(parts) == 1 else (ref, len(parts), n))
        back.append(got.text)
    assert "".join(back) == text


@settings(max_examples=100, deadline=None)
@given(st.one_of(GSM_TEXT, ANY_TEXT), NUMBERS, st.integers(-48, 56))
def test_a_delivered_message_and_its_report_read_back(
    text: str, number: str, quarters: int
) -> None:
    at = datetime(2031, 7, 4, 9, 30, 15, tzinfo=timezone(timedelta(minutes=15 * quarters)))
    parts = pdu.split(text, 3)
    got = [pdu.read_deliver(pdu.deliver(number, p, at)) for p in parts]
    assert "".join(g.text for g in got) == text
    assert {g.sender for g in got} == {number} and {g.at for g in got} == {at}
    report = pdu.read_status_report(pdu.status_report(42, number, 0x00, at))
    assert (report.reference, report.recipient, report.delivered, report.at) == (
        42,
        number,
        True,
        at,
    )
    failed = pdu.read_status_report(pdu.status_report(7, number, 0x41, at.astimezone(UTC)))
    assert failed.failed and not failed.delivered


@given(st.binary(max_size=200))
def test_garbage_is_a_pdu_error_never_a_crash(raw: bytes) -> None:
    for read in (pdu.read_deliver, pdu.read_submit, pdu.read_status_report):
        with contextlib.suppress(pdu.PduError):
            read(raw)


def test_a_part_is_what_it_says() -> None:
    p = Part(Coding.GSM7, [0x48, 0x49])
    assert pdu.read_submit(pdu.submit("+447700900123", p)).text == "HI"
