"""Fault tests: every one ends with the receiver's proof that every seq from 1 to the last
stored arrived (or was deliberately removed and said so), counting duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from sosbeacon.device.mqtt import BrokerConfig, Connection, ConnectRefused, MqttError, TlsConfig
from sosbeacon.device.outbox import Outbox
from sosbeacon.device.outbox.testing import Probe
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.sim.broker import Mosquitto, free_port
from sosbeacon.sim.netfault import FaultProxy, LinkMode
from sosbeacon.sim.tlsca import Issued, TestCA
from tests.mqtt_env import DURABLE, T0, fix_record, rig


def users(tmp_path: Path) -> None:
    """Accounts in the broker's password file (before it starts)."""
    pw = Mosquitto(tmp_path / "broker")
    pw.add_user("dev1", "dev1-secret")
    pw.add_user("contact", "contact-secret")


def account(user: str, port: int, password: str | None = None) -> BrokerConfig:
    return BrokerConfig(
        host="127.0.0.1",
        port=port,
        client_id=user,
        username=user,
        password=password or f"{user}-secret",
        connect_timeout=3,
    )


FAST = UplinkConfig(device_id="dev1", batch_count=1, backoff_min=0.2, backoff_max=1.0)


@contextlib.asynccontextmanager
async def recording(outbox: Outbox, *, rate: float = 10.0) -> AsyncIterator[list[int]]:
    """Store a live fix ``rate`` times a second until the block ends; yields the seqs."""
    seqs: list[int] = []

    async def run() -> None:
        i = 0
        while True:
            seqs.append((await outbox.store(fix_record(i, session="s1"))).seq)
            i += 1
            await asyncio.sleep(1 / rate)

    task = asyncio.create_task(run())
    try:
        yield seqs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_broker_killed_and_restarted_several_times(tmp_path: Path) -> None:
    async with rig(tmp_path, config=FAST) as r:
        async with recording(r.outbox) as seqs:
            for _ in range(3):
                await r.uplink.connected.wait()
                await asyncio.sleep(0.7)
                r.broker.kill()  # kill -9, mid-stream
                await asyncio.sleep(0.5)
                r.broker.start()
            await r.uplink.connected.wait()
        led = await r.receiver.wait_for_seqs(seqs[-1])
        assert led.missing() == []
        assert r.uplink.stats.connects >= 4
        print(f"broker kills: {len(seqs)} records, {led.duplicates} duplicates")


async def test_black_holed_link_is_noticed_by_keepalive_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    async with (
        rig(tmp_path, config=FAST, start=False) as r,
        FaultProxy(target_port=r.broker.port) as proxy,
    ):
        r.uplink.broker = BrokerConfig(
            host="127.0.0.1",
            port=proxy.port,
            client_id="dev1",
            keepalive=2,
            connect_timeout=2,
        )
        r.start_uplink()
        async with recording(r.outbox) as seqs:
            await r.uplink.connected.wait()
            await asyncio.sleep(0.5)
            proxy.set(LinkMode.BLACKHOLE)
            t0 = time.monotonic()
            await r.uplink.disconnected.wait()
            noticed = time.monotonic() - t0
            why = r.uplink.stats.last_error
            # the messages sent into the black hole keep their ids in the outbox
            lost_ids = {row[0] for row in await Probe(r.outbox).sql("SELECT msg_id FROM bindings")}
            await asyncio.sleep(0.5)
            proxy.set(LinkMode.PASS)
            await r.uplink.connected.wait()
        led = await r.receiver.wait_for_seqs(seqs[-1])
        assert led.missing() == []
        # ... and were resent with the same ids
        assert lost_ids
        received_ids = {dict(d.user_properties).get("msg_id") for d in r.receiver.history}
        assert lost_ids <= received_ids
        # noticed by paho's keepalive (a ping after one keepalive of silence, given up
        # after another), not by TCP, which takes minutes on a black hole
        assert "keep alive timeout" in why.lower(), why
        print(f"black hole noticed after {noticed:.1f}s; {led.duplicates} duplicates")


async def test_latency_and_bandwidth_limits_and_sos_goes_before_the_backlog(
    tmp_path: Path,
) -> None:
    async with (
        rig(tmp_path, config=FAST, start=False) as r,
        FaultProxy(target_port=r.broker.port) as proxy,
    ):
        proxy.latency = 0.1
        proxy.bandwidth = 20_000
        r.uplink.broker = BrokerConfig(host="127.0.0.1", port=proxy.port, client_id="dev1")
        for i in range(2000):
            await r.outbox.store(fix_record(i, priority=Priority.ROUTINE))
        r.start_uplink()
        await r.uplink.connected.wait()
        sos = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")
        sos_seq = (await r.outbox.store(sos)).seq
        led = await r.receiver.wait_for_seqs(sos_seq, within=60)
        assert led.missing() == []
        order = [x.seq for x in r.receiver.records]
        # the SOS did not wait for the 2000-record backlog to drain
        assert order.index(sos_seq) < order.index(2000)


async def test_acl_denial_keeps_records_until_the_acl_allows(tmp_path: Path) -> None:
    def acl(track_allowed: bool) -> str:
        lines = [
            "user contact",
            "topic read sosbeacon/#",
            "topic read owntracks/#",
            "user dev1",
            "topic readwrite sosbeacon/dev1/status",
            "topic readwrite sosbeacon/dev1/sos",
            "topic write owntracks/sosbeacon/dev1",
        ]
        if track_allowed:
            lines.append("topic write sosbeacon/dev1/track")
        (tmp_path / "acl").write_text("\n".join(lines) + "\n")
        return (
            DURABLE
            + f"allow_anonymous false\npassword_file {tmp_path / 'broker' / 'passwd'}\n"
            + f"acl_file {tmp_path / 'acl'}\n"
        )

    port = free_port()
    users(tmp_path)
    async with rig(
        tmp_path,
        config=FAST,
        broker_config=acl(False),
        broker_port=port,
        device_broker=account("dev1", port),
        receiver_broker=account("contact", port),
    ) as r:
        for i in range(5):
            await r.outbox.store(fix_record(i, session="s1"))
        sos = Record(RecordKind.SOS_START, T0, {"trigger": "cli"}, Priority.SOS, "s1")
        await r.outbox.store(sos)
        await r.receiver.wait_until(lambda: any(x.kind == "sos-start" for x in r.receiver.records))
        await r.uplink.refused.wait()
        assert "Not authorized" in " ".join(r.uplink.stats.failures)
        async with asyncio.timeout(10):
            while True:  # until the SOS is acknowledged (and so deleted)
                r.uplink.acked.clear()
                if r.uplink.stats.records_acked >= 1:
                    break
                await r.uplink.acked.wait()
        assert (await r.outbox.stats()).depth == 5  # denied: kept, none lost
        r.broker.reload(acl(True))
        led = await r.receiver.wait_for_seqs(6)
        assert led.missing() == []


async def test_tls_with_client_certificates_and_passwords_and_a_wrong_ca(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("broker", hosts=("localhost",))
    device = ca.issue("dev1", client=True)
    contact = ca.issue("contact", client=True)
    impostor = TestCA(tmp_path / "other", name="some other CA")

    users(tmp_path)
    port = free_port()
    conf = (
        DURABLE
        + f"listener {port} 127.0.0.1\n"
        + f"cafile {ca.cert}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        + "require_certificate true\n"
        + f"allow_anonymous false\npassword_file {tmp_path / 'broker' / 'passwd'}\n"
    )

    def tls_broker(user: str, secret: str, leaf: Issued, ca_file: Path) -> BrokerConfig:
        tls = TlsConfig(ca_file=str(ca_file), cert_file=str(leaf.cert), key_file=str(leaf.key))
        return replace(account(user, port, secret), host="localhost", tls=tls)

    async with rig(
        tmp_path,
        config=FAST,
        broker_config=conf,
        broker_port=port,
        device_broker=tls_broker("dev1", "dev1-secret", device, impostor.cert),
        receiver_broker=tls_broker("contact", "contact-secret", contact, ca.cert),
    ) as r:
        for i in range(5):
            await r.outbox.store(fix_record(i, session="s1"))
        await r.uplink.disconnected.wait()
        await r.outbox.store(fix_record(5, session="s1"))  # while it keeps failing
        assert "certificate" in r.uplink.stats.last_error
        assert not r.uplink.connected.is_set()
        assert (await r.outbox.stats()).depth == 6  # refused, nothing lost
        # the right CA: delivered
        r.uplink.broker = tls_broker("dev1", "dev1-secret", device, ca.cert)
        led = await r.receiver.wait_for_seqs(6)
        assert led.missing() == []
        # the certificate names "localhost": reaching the same broker as 127.0.0.1 fails
        # host name verification
        probe = Connection(
            replace(tls_broker("dev1", "dev1-secret", device, ca.cert), host="127.0.0.1")
        )
        with pytest.raises(MqttError, match="certificate was not accepted"):
            await probe.connect()
        probe.close()
        # a wrong password is refused by the broker with a reason that says what to check
        probe = Connection(tls_broker("dev1", "wrong", device, ca.cert))
        with pytest.raises(ConnectRefused, match="check the username and password"):
            await probe.connect()
        probe.close()


async def test_a_full_disk_is_an_error_for_the_new_record_only(tmp_path: Path) -> None:
    from sosbeacon.device.outbox import OutboxFull

    async with rig(tmp_path, config=FAST) as r:
        for i in range(3):
            await r.outbox.store(fix_record(i, session="s1"))
        r.broker.kill()  # offline, so the outbox grows until the disk is full
        await r.uplink.disconnected.wait()
        await Probe(r.outbox).sql("PRAGMA max_page_count=1")

        async def fill() -> None:
            for i in range(3, 5000):
                await r.outbox.store(fix_record(i, session="s1"))

        with pytest.raises(OutboxFull, match="free some space"):
            await fill()
        await Probe(r.outbox).sql("PRAGMA max_page_count=1000000")
        r.broker.start()
        last = (await r.outbox.store(fix_record(9999, session="s1"))).seq
        led = await r.receiver.wait_for_seqs(last)
        assert led.missing() == []
        assert r.task is not None and not r.task.done()  # the uplink carried on


@pytest.mark.parametrize(
    "limit",
    ["max_packet_size 4096", "message_size_limit 3000"],
    ids=["advertised-in-connack", "refused-with-0x95"],
)
async def test_a_broker_with_a_small_size_limit_gets_smaller_batches(
    tmp_path: Path, limit: str
) -> None:
    async with rig(tmp_path, config=FAST, broker_config=DURABLE + limit + "\n", start=False) as r:
        for i in range(1500):
            await r.outbox.store(fix_record(i, priority=Priority.ROUTINE))
        r.start_uplink()
        led = await r.receiver.wait_for_seqs(1500)
        assert led.missing() == []
        track = [d for d in r.receiver.history if d.topic == r.uplink.topics.track]
        assert max(len(d.payload) for d in track) <= 3000


def test_a_connection_collected_after_its_event_loop_closed_stays_quiet() -> None:
    """paho closes its socket when its client is garbage-collected, which may be after
    the event loop ended (seen at the end of a soak campaign): the connection must not
    try to wake anyone on the closed loop."""

    async def connecting() -> Connection:
        conn = Connection(BrokerConfig(host="127.0.0.1", port=free_port()))
        conn._connack.add_done_callback(lambda _: None)  # as a connect() waiting would
        return conn

    conn = asyncio.run(connecting())
    conn._on_socket_close(conn._client, None, None)  # what paho's __del__ ends in
    assert not conn.closed.done()  # nothing was set on the closed loop


async def test_the_network_coming_back_ends_the_wait_to_reconnect(tmp_path: Path) -> None:
    """NetworkManager (or the modem) says the network is gone: the connection is let go
    at once, not left to the keepalive; it says the network is back: the uplink
    connects at once, though its backoff had it wait at least half a minute, and what
    was stored meanwhile arrives."""
    slow = UplinkConfig(
        device_id="dev1", batch_count=1, backoff_min=60.0, backoff_max=60.0, backoff_max_sos=60.0
    )
    async with rig(tmp_path, config=slow) as r:
        await asyncio.wait_for(r.uplink.connected.wait(), 10)
        r.uplink.network_down()
        await asyncio.wait_for(r.uplink.disconnected.wait(), 2)
        assert "network went down" in r.uplink.stats.last_error
        seq = (await r.outbox.store(fix_record(1, session="s1"))).seq
        await asyncio.sleep(1.0)
        assert not r.uplink.connected.is_set()  # waiting out a backoff of 30 s or more
        t0 = time.monotonic()
        r.uplink.network_up()
        await asyncio.wait_for(r.uplink.connected.wait(), 5)
        back = time.monotonic() - t0
        led = await r.receiver.wait_for_seqs(seq)
        assert led.missing() == [] and back < 1.5, back
