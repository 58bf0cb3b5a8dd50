"""The SMS policy (device/sms.py): when the device texts the contacts during an SOS,
whom, how often, and when it stops; on a clock the test holds (plain seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

from sosbeacon.device.sms import (
    Kind,
    Position,
    SmsConfig,
    SmsPolicy,
    alert_text,
    end_text,
    is_ack,
    phone_numbers,
)
from sosbeacon.device.sos import Contact

ALICE = Contact("Alice", "alice@example.org, +44 7700 900123")
BOB = Contact("Bob", "+44 7700 900456")
CAROL = Contact("Carol", "tgram:123456")  # no phone: never texted


def policy(**cfg: float) -> SmsPolicy:
    numbers = phone_numbers((ALICE, BOB, CAROL))
    return SmsPolicy(SmsConfig(**cfg), numbers, started=100.0)  # type: ignore[arg-type]


def test_only_phone_numbers_of_contacts_are_texted() -> None:
    assert phone_numbers((ALICE, BOB, CAROL)) == [
        ("+447700900123", "Alice", 0),  # with each contact's place, as the relay numbers them
        ("+447700900456", "Bob", 1),
    ]
    assert phone_numbers((CAROL, BOB)) == [("+447700900456", "Bob", 1)]


def test_a_confirmed_sos_sends_no_sms_and_a_silent_one_does_after_the_wait() -> None:
    p = policy()
    p.broker_acked, p.receipt = True, True
    assert p.due(200.0) == [] and p.wake_at() is None  # nothing comes unless the link goes
    q = policy()
    q.broker_acked = True  # the broker took it, but no relay said it reached anyone
    assert q.due(129.0) == []
    due = q.due(130.0)
    assert [(d.number, d.kind, d.n) for d in due] == [
        ("+447700900123", Kind.ALERT, 1), ("+447700900456", Kind.ALERT, 1),
    ]  # fmt: skip


def test_a_dead_link_during_the_sos_triggers_too() -> None:
    p = policy()
    p.broker_acked, p.receipt = True, True  # all was well at the start ...
    p.link(False, 500.0)  # ... then the network went
    assert p.due(529.0) == [] and p.wake_at() == 530.0
    assert len(p.due(530.0)) == 2
    p2 = policy()
    p2.broker_acked = p2.receipt = True
    p2.link(False, 500.0)
    p2.link(True, 510.0)  # back in time: nothing sent
    assert p2.due(600.0) == []


def test_alerts_repeat_until_acknowledged_and_end_goes_to_who_was_alerted() -> None:
    p = policy(every=600)
    for d in p.due(130.0):
        p.sent(d, 130.0)
    assert p.due(400.0) == [] and p.wake_at() == 730.0
    again = p.due(730.0)
    assert [d.n for d in again] == [2, 2]
    for d in again:
        p.sent(d, 730.0)
    assert p.acknowledgement_from("+447700900999", "OK") is None  # not a contact
    assert p.acknowledgement_from("+447700900456", "see you") is None  # not an ack
    assert p.acknowledgement_from("+447700900456", "ok, on my way") == ("+447700900456", "Bob", 1)
    assert p.due(5000.0) == []  # acknowledged: no more alerts
    p.ended = True
    ends = p.due(5001.0)
    assert {(d.number, d.kind) for d in ends} == {
        ("+447700900123", Kind.END), ("+447700900456", Kind.END),
    }  # fmt: skip
    for d in ends:
        p.sent(d, 5001.0)
    assert p.due(5002.0) == [] and p.wake_at() is None


def test_the_cost_cap_holds_and_an_unalerted_end_sends_nothing() -> None:
    p = policy(max_per_session=3, every=60)
    sent = 0
    for t in range(130, 2000, 10):
        for d in p.due(float(t)):
            p.sent(d, float(t))
            sent += 1
    assert sent == 3 and p.wake_at() is None
    q = policy()
    q.broker_acked = q.receipt = True
    q.ended = True
    assert q.due(1000.0) == []  # nobody was texted: no "ended" either
    off = policy(enabled=False)
    assert off.due(1000.0) == [] and off.wake_at() is None


def test_the_texts_say_who_where_when_and_how_to_answer() -> None:
    at = datetime(2031, 5, 6, 10, 4, 41, tzinfo=UTC)
    text = alert_text(
        owner="Sam", drill=False, position=Position(55.952401, -3.172349, 5.0, at, 12.4),
        battery=84.6, link="https://sos.example.org/s/abc",
    )  # fmt: skip
    assert text.splitlines() == [
        "SOS: Sam needs help.", "Position: 55.95240,-3.17235 +-5m", "Fix: 10:04:41Z (12s old)",
        "Battery: 85%", "Route: https://sos.example.org/s/abc", "Reply OK to acknowledge.",
    ]  # fmt: skip
    drill = alert_text(owner="Sam", drill=True, position=None, battery=None, link=None)
    assert drill.startswith("DRILL (a test") and "no fix yet" in drill
    assert end_text(owner="Sam", drill=False).startswith("SOS ended")
    assert is_ack("OK") and is_ack(" ack ") and is_ack("Ok thanks") and not is_ack("book")


def test_a_text_that_could_not_go_is_owed_and_tried_again_soon() -> None:
    p = policy(every=600)
    first = p.due(130.0)
    for d in first:
        p.sent(d, 130.0)  # recorded before it goes
    p.failed(first[1], 130.0, retry_after=30)  # Bob's did not go (no network service)
    assert p.due(150.0) == [] and p.wake_at() == 160.0
    (retry,) = p.due(160.0)
    assert (retry.number, retry.n) == ("+447700900456", 1)  # owed, before the next round
    p.sent(retry, 160.0)
    assert p.wake_at() == 730.0


def test_a_restart_goes_on_from_the_log_and_sends_nothing_twice() -> None:
    p = policy(every=600)
    for d in p.due(130.0):
        p.sent(d, 130.0)
    log = p.to_log()
    q = policy(every=600)  # the daemon again, its clock started anew
    q.restore(log, 50.0)
    assert q.due(50.0) == [] and q.wake_at() == 650.0  # the next round, a whole interval on
    q.ended = True
    assert {d.number for d in q.due(60.0)} == {"+447700900123", "+447700900456"}


def test_an_ended_session_in_the_log_stays_ended_and_owes_its_ends() -> None:
    """The log of a drill that ended with its ends unsent: restored, the policy knows it
    ended, is a drill, and owes the end to each number alerted, and nothing else."""
    p = SmsPolicy(SmsConfig(), phone_numbers((ALICE, BOB)), started=100.0, drill=True)
    for d in p.due(130.0):
        p.sent(d, 130.0)
    p.ended = True
    (first, second) = p.due(131.0)
    p.sent(first, 131.0)
    assert not p.finished
    q = SmsPolicy(SmsConfig(), phone_numbers((ALICE, BOB)), started=5.0)
    q.restore(p.to_log(), 5.0)
    assert (q.ended, q.drill, q.finished) == (True, True, False)
    assert [(d.number, d.kind) for d in q.due(5.0)] == [(second.number, Kind.END)]
    assert q.acknowledgement_from(second.number, "OK") is None  # an ended SOS takes no OK
    q.sent(second, 5.0)
    assert q.finished and q.due(6.0) == [] and q.wake_at() is None
