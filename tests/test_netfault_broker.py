"""The network fault proxy and the throwaway broker that the uplink's fault tests use."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sosbeacon.sim.broker import Mosquitto, find_mosquitto
from sosbeacon.sim.netfault import FaultProxy, LinkMode
from tests.conftest import require


async def echo_server() -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def roundtrip(port: int, payload: bytes, timeout: float = 2.0) -> tuple[bytes, float]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    w.write(payload)
    await w.drain()
    got = b""
    async with asyncio.timeout(timeout):
        while len(got) < len(payload):
            chunk = await r.read(65536)
            if not chunk:
                break
            got += chunk
    w.close()
    return got, time.monotonic() - t0


async def test_pass_latency_and_bandwidth() -> None:
    server = await echo_server()
    async with server, FaultProxy(target_port=server.sockets[0].getsockname()[1]) as proxy:
        got, _ = await roundtrip(proxy.port, b"hello")
        assert got == b"hello"
        proxy.latency = 0.1
        got, took = await roundtrip(proxy.port, b"slow")
        assert got == b"slow" and took >= 0.2  # 0.1 s each way
        proxy.latency = 0.0
        proxy.bandwidth = 20_000
        got, took = await roundtrip(proxy.port, b"x" * 10_000)
        assert len(got) == 10_000 and took >= 0.5  # 10 kB at 20 kB/s, each way


async def test_blackhole_swallows_silently_and_recovers() -> None:
    server = await echo_server()
    async with server, FaultProxy(target_port=server.sockets[0].getsockname()[1]) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"ping")
        assert await asyncio.wait_for(r.read(10), 2) == b"ping"
        proxy.set(LinkMode.BLACKHOLE)
        w.write(b"lost")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(10), 0.5)  # no answer, and no error either
        assert not w.is_closing()
        proxy.set(LinkMode.PASS)
        w.write(b"back")
        assert await asyncio.wait_for(r.read(10), 2) == b"back"
        w.close()


async def test_refuse_and_reset() -> None:
    server = await echo_server()
    async with server, FaultProxy(target_port=server.sockets[0].getsockname()[1]) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"a")
        assert await asyncio.wait_for(r.read(1), 2) == b"a"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(1), 2)
        proxy.set(LinkMode.REFUSE)
        r2, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r2.read(1), 2)


# -- broker ------------------------------------------------------------------------------


@pytest.fixture
def mosquitto_bin() -> str:
    path = find_mosquitto()
    require("mosquitto", path is not None, "sudo apt-get install mosquitto")
    assert path is not None
    return path


def client(port: int) -> tuple[mqtt.Client, threading.Event, list[mqtt.MQTTMessage]]:
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.suback = threading.Event()  # type: ignore[attr-defined]
    c.on_subscribe = lambda *_: c.suback.set()  # type: ignore[attr-defined]

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg)
        arrived.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, arrived, got


def test_throwaway_broker_kill_and_restart(mosquitto_bin: str, tmp_path: Path) -> None:
    with Mosquitto(tmp_path, binary=mosquitto_bin) as broker:
        c, arrived, got = client(broker.port)
        c.subscribe("t/#", qos=1)
        assert c.suback.wait(5)  # type: ignore[attr-defined]
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 60
        props.UserProperty = ("msg_id", "abc")
        c.publish("t/x", b"hello", qos=1, properties=props).wait_for_publish(5)
        assert arrived.wait(5)
        assert got[0].payload == b"hello"
        assert ("msg_id", "abc") in got[0].properties.UserProperty
        c.loop_stop()
        c.disconnect()
        port = broker.port
        broker.kill()
        assert not broker.running
        with pytest.raises(ConnectionRefusedError):
            mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5).connect(
                "127.0.0.1", port
            )
        broker.start()
        assert broker.port == port
        c2, _, _ = client(port)
        c2.loop_stop()
        c2.disconnect()
