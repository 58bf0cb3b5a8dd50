"""The per-device ACL example that ships in docs/mosquitto/acl: with it, a device cannot
publish or read another device's topics, and the contacts still see everything."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.sim.broker import Mosquitto
from tests.conftest import REPO
from tests.mqtt_env import need_mosquitto


def account(user: str, port: int) -> BrokerConfig:
    return BrokerConfig(
        host="127.0.0.1", port=port, client_id=user, username=user, password=f"{user}-pw"
    )


def acl_broker(tmp_path: Path, users: tuple[str, ...]) -> Mosquitto:
    """A broker with the shipped ACL, a password for each of ``users``, no anonymous."""
    broker = Mosquitto(tmp_path, binary=need_mosquitto())
    for user in users:
        broker.add_user(user, f"{user}-pw")
    broker.extra_config = (
        f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        f"acl_file {REPO / 'docs' / 'mosquitto' / 'acl'}\n"
    )
    return broker


async def connected(users: tuple[str, ...], port: int) -> dict[str, Connection]:
    conns = {u: Connection(account(u, port)) for u in users}
    for c in conns.values():
        await c.connect()
    return conns


async def test_one_device_cannot_publish_or_read_anothers_topics(tmp_path: Path) -> None:
    users = ("dev1", "dev2", "contacts")
    with acl_broker(tmp_path, users) as broker:
        conns = await connected(users, broker.port)
        dev1, dev2, contacts = conns["dev1"], conns["dev2"], conns["contacts"]
        await contacts.subscribe("sosbeacon/#")
        spy = await dev1.subscribe("sosbeacon/dev2/#")  # reading another device: refused
        assert (await dev2.subscribe("sosbeacon/dev2/cmd")).value < 0x80

        # publishing on another device's topic is refused with "not authorized"
        rc = await dev1.publish("sosbeacon/dev2/track", b"{}")
        assert rc.value == 0x87, rc
        # its own topics are fine (every one a device publishes), and the contacts see them
        assert not (await dev1.publish("sosbeacon/dev1/track", b'{"from":"dev1"}')).is_failure
        # a command for dev2 reaches dev2 and nobody else
        assert not (await contacts.publish("sosbeacon/dev2/cmd", b'{"cmd":"ack"}')).is_failure
        got = await asyncio.wait_for(dev2.messages.get(), 5)
        assert got.topic == "sosbeacon/dev2/cmd"
        assert not (await dev2.publish("sosbeacon/dev2/track", b'{"from":"dev2"}')).is_failure
        seen = []
        while len(seen) < 3:
            m = await asyncio.wait_for(contacts.messages.get(), 5)
            seen.append((m.topic, m.payload))
        assert ("sosbeacon/dev1/track", b'{"from":"dev1"}') in seen
        assert ("sosbeacon/dev2/track", b'{"from":"dev2"}') in seen
        for own in ("sosbeacon/dev1/voice", "sosbeacon/dev1/ha/sos",
                    "owntracks/sosbeacon/dev1/event",
                    "homeassistant/sensor/sosbeacon_dev1/battery/config"):  # fmt: skip
            assert not (await dev1.publish(own, b"")).is_failure, own
        for theirs in (
            "sosbeacon/dev2/voice",
            "homeassistant/sensor/sosbeacon_dev2/battery/config",
        ):
            assert (await dev1.publish(theirs, b"")).value == 0x87, theirs
        # A round trip on dev1's own connection: anything the broker sent dev1 before this
        # PUBACK (dev2's publish and the command came earlier) has arrived by now.
        assert not (await dev1.publish("sosbeacon/dev1/status", b"{}")).is_failure
        # Mosquitto 2.0 grants the subscription and filters each message; a broker that
        # refuses the subscription outright is as good.
        assert spy.is_failure or spy.value == 1
        assert dev1.messages.empty(), "dev1 read another device's topics"
        for c in conns.values():
            await c.disconnect()


async def test_the_relay_reads_every_device_and_only_it_writes_their_receipts(
    tmp_path: Path,
) -> None:
    users = ("dev1", "dev2", "sos-relay")
    with acl_broker(tmp_path, users) as broker:
        conns = await connected(users, broker.port)
        dev1, dev2, relay = conns["dev1"], conns["dev2"], conns["sos-relay"]
        assert (await relay.subscribe("$share/sos-relay/sosbeacon/+/#")).value < 0x80
        assert (await dev1.subscribe("sosbeacon/dev1/receipt")).value < 0x80
        assert not (await dev2.publish("sosbeacon/dev2/sos", b'{"from":"dev2"}')).is_failure
        got = await asyncio.wait_for(relay.messages.get(), 5)
        assert (got.topic, got.payload) == ("sosbeacon/dev2/sos", b'{"from":"dev2"}')
        # a device cannot forge its own receipt, nor another's
        for topic in ("sosbeacon/dev1/receipt", "sosbeacon/dev2/receipt"):
            assert (await dev1.publish(topic, b'{"v":1}', retain=True)).value == 0x87
        # the relay's receipt reaches its device; its "I'm on it" command too
        assert not (await relay.publish("sosbeacon/dev1/receipt", b'{"v":1}')).is_failure
        got = await asyncio.wait_for(dev1.messages.get(), 5)
        assert got.topic == "sosbeacon/dev1/receipt"
        assert not (await relay.publish("sosbeacon/dev1/cmd", b'{"cmd":"ack"}')).is_failure
        for c in conns.values():
            await c.disconnect()


async def test_a_broker_that_refused_keeps_its_backoff_when_the_network_returns(
    tmp_path: Path,
) -> None:
    """A wrong password is not cured by the network coming back: the uplink does not
    hammer the broker on every network change."""
    from sosbeacon.device.clock import MonotonicClock
    from sosbeacon.device.outbox import Outbox
    from sosbeacon.device.uplink import Uplink, UplinkConfig

    broker = acl_broker(tmp_path / "broker", ("dev1",))
    broker.start()
    try:
        wrong = BrokerConfig(
            host="127.0.0.1", port=broker.port, client_id="dev1", username="dev1", password="x"
        )
        cfg = UplinkConfig(device_id="dev1", backoff_min=60.0, backoff_max=60.0)
        async with await Outbox.open(tmp_path / "o.db") as box:
            up = Uplink(config=cfg, broker=wrong, outbox=box, clock=MonotonicClock())
            task = asyncio.create_task(up.run())
            try:
                await asyncio.wait_for(up.disconnected.wait(), 10)
                assert "refused" in up.stats.last_error.lower()
                tries = up.stats.last_error
                up.disconnected.clear()
                up.network_up()
                with pytest.raises(TimeoutError):  # no new attempt: the backoff stands
                    await asyncio.wait_for(up.disconnected.wait(), 1.5)
                assert up.stats.last_error == tries
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        broker.stop()
