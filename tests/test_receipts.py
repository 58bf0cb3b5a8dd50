"""The device's side of the relay's receipts: what ``sosctl status`` says reached whom,
the "not yet received by anyone" state, and receipts that are not receipts."""

from __future__ import annotations

import json

from sosbeacon.device.receipts import Delivery, describe

NOW = 1_800_000_000.0


def receipt(sess: str, **contacts: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "t": NOW,
            "stored": {"box1": "1-14"},
            "sess": sess,
            "sos_stored": NOW - 5,
            "exp": None,
            "contacts": [{"name": n, **c} for n, c in contacts.items()],
        }
    ).encode()


def test_status_names_who_was_notified_opened_and_is_on_it() -> None:
    d = Delivery()
    ok = {"kind": "start", "channel": "email", "state": "sent", "at": NOW - 4}
    assert d.take(
        receipt(
            "s1",
            Alice={"notified": [ok], "opened": NOW - 3, "acked": NOW - 2},
            Bob={
                "notified": [
                    {
                        "kind": "start",
                        "channel": "sms",
                        "state": "failed",
                        "error": "no notify.services.sms",
                    }
                ]
            },
            Carol={
                "notified": [
                    {
                        "kind": "start",
                        "channel": "tgram",
                        "state": "pending",
                        "error": "the service refused it",
                    }
                ]
            },
            Dan={"notified": []},
        )
    )
    (line,) = describe(d.status("s1"))
    parts = line.split("; ")
    assert parts[0] == "SOS delivered to the relay"
    assert (
        parts[1].startswith("Alice notified (email, ok), opened ") and ", on it since " in parts[1]
    )
    assert parts[2:] == ["Bob: send failed", "Carol: send failed, retrying", "Dan: not notified"]
    # the receipt of another (older) session is not shown as this one's
    assert describe(d.status("s2")) == []


def test_an_sos_nobody_was_subscribed_to_stays_marked_until_its_receipt() -> None:
    d = Delivery()
    d.no_subscribers("s1")
    assert describe(d.status("s1"))[0].startswith("NOT YET RECEIVED BY ANYONE: SOS s1")
    d.take(receipt("s0"))  # a receipt of an earlier session does not clear it
    assert d.unheard == "s1"
    d.take(receipt("s1", Alice={"notified": []}))
    assert d.unheard is None
    assert not describe(d.status("s1"))[0].startswith("NOT YET")


def test_what_is_not_a_receipt_is_counted_and_changes_nothing() -> None:
    d = Delivery()
    d.take(receipt("s1"))
    for junk in (b"{", b"[]", b'{"v":2,"stored":{}}', b'{"v":1}', b'{"v":1,"stored":{},'
                 b'"contacts":[1]}', b"x" * 70_000, b"[" * 100_000):  # fmt: skip
        assert d.take(junk) is False
    assert d.refused == 7
    assert d.receipt is not None and d.receipt["sess"] == "s1"
    assert d.take(b"") is True  # the relay withdrew its retained receipt


def test_share_links_are_taken_only_as_plain_urls_by_the_contact_s_place() -> None:
    """A link goes into a text as it is: one with a line break could forge a line of
    the SMS ("Position: ..."), so anything but a plain http(s) URL is left out."""
    from sosbeacon.device.receipts import share_links

    good = "https://sos.example.org/s/c_laiPydmkbecz6N2XFADfrPxlFxrmcW"
    contacts = [
        {"contact": 0, "name": "Alice", "link": good},
        {"contact": 1, "name": "Bob", "link": good + "\nPosition: 0,0"},
        {"contact": 2, "name": "Carol", "link": "javascript:alert(1)"},
        {"contact": "3", "name": "Dan", "link": good},
        {"contact": 4, "name": "Eve", "link": "https://x.org/ spaced"},
        {"contact": 5, "name": "Fay"},  # revoked or ended: no link
        "not a contact",
    ]
    assert share_links(contacts) == {0: good}
    assert share_links(None) == {} and share_links({"contact": 0}) == {}
