"""End-to-end encryption of our own topics (docs/security.md): the device seals what it
sends and opens what it is sent under the key it shares with the relay; the broker and
anyone subscribed to it see only sealed bytes beside the msg_id and seq properties; the
relay opens, stores and answers sealed; what does not open is counted and never stored;
a key rotation loses nothing of a backlog stored before it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device import config as config_mod
from sosbeacon.device.control import request
from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.device.wire import (
    KeyFileError,
    SealError,
    decode_sos,
    dumps,
    encode_sos,
    is_sealed,
    key_id,
    read_key,
    seal,
    unseal,
)
from sosbeacon.relay import keys as relay_keys
from sosbeacon.relay.keys import DeviceKeys
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.mailsink import MailSink
from tests.helpers import eventually, sim_daemon
from tests.mqtt_env import DURABLE, fix_record, need_mosquitto, rig
from tests.relay_env import relay_rig, relay_settings
from tests.test_relay import sos_start
from tests.test_relay_page import device_config


def key_file(path: Path, key: bytes | None = None) -> bytes:
    key = key or os.urandom(32)
    path.write_bytes(key)
    path.chmod(0o600)
    return key


def test_a_sealed_payload_opens_only_under_its_key_and_untouched() -> None:
    a, b = os.urandom(32), os.urandom(32)
    sealed = seal(a, b'{"lat":55.95}')
    assert is_sealed(sealed) and b"55.95" not in sealed
    assert seal(a, b"x") != seal(a, b"x")  # a fresh nonce every time
    assert unseal([b, a], sealed) == (b'{"lat":55.95}', a)  # old and new keys held
    with pytest.raises(SealError, match="unknown key"):
        unseal([b], sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError, match="does not authenticate"):
        unseal([a], tampered)
    with pytest.raises(SealError, match="not a sealed payload"):
        unseal([a], b'{"v":1}')
    forged = sealed[:4] + key_id(a) + os.urandom(60)  # the right id, not the key
    with pytest.raises(SealError):
        unseal([a], forged)


def test_a_key_file_is_refused_with_the_fix_when_others_may_read_it(tmp_path: Path) -> None:
    p = tmp_path / "dev.key"
    key = key_file(p)
    assert read_key(p) == key
    p.chmod(0o644)
    with pytest.raises(KeyFileError, match=f"run chmod 600 {re.escape(str(p))}"):
        read_key(p)
    hexed = tmp_path / "hex.key"
    hexed.write_text(key.hex() + "\n")
    hexed.chmod(0o600)
    assert read_key(hexed) == key
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="head -c 32 /dev/urandom"):
        read_key(short)
    # the device's configuration says so at load, naming the key and never its content
    text = f'[device]\nid = "b1"\n[[sos.contacts]]\nname = "A"\n[uplink]\nkey_file = "{p}"\n'
    p.chmod(0o604)
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(text=text)
    assert "uplink.key_file" in str(err.value) and key.hex() not in str(err.value)


def test_a_key_overwritten_in_place_is_read_again_and_forged_ids_do_not_make_it_reread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file written over in place leaves the directory's time as it was: the relay
    reads its keys again when a message names a key id it does not hold, at most every
    RELOAD_EVERY seconds (messages under forged ids must not make it read them over and
    over)."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    a = key_file(keys / "dev1.key")
    held = DeviceKeys(keys)
    assert held.open("dev1", seal(a, b"one")) == b"one"
    before = keys.stat()
    b = key_file(keys / "dev1.key", os.urandom(32))
    os.utime(keys, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert keys.stat().st_mtime_ns == before.st_mtime_ns
    assert held.open("dev1", seal(b, b"two")) == b"two"
    assert unseal([b], held.seal("dev1", b"back"))[0] == b"back"
    reads: list[object] = []
    real = relay_keys.read_key

    def counting(path: Path) -> bytes:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(relay_keys, "read_key", counting)
    for _ in range(20):
        with pytest.raises(SealError, match="unknown key"):
            held.open("dev1", seal(os.urandom(32), b"forged"))
    assert reads == []  # read again for "two" a moment ago: not again so soon
    monkeypatch.setattr(relay_keys, "RELOAD_EVERY", 0.0)  # as if that long had passed
    with pytest.raises(SealError, match="unknown key"):
        held.open("dev1", seal(os.urandom(32), b"forged"))
    assert len(reads) == 1  # then once


async def test_nobody_on_the_broker_reads_the_sos_and_the_relay_does(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = key_file(keys / "t1.key")
    with (
        Mosquitto(tmp_path / "broker", config=DURABLE, binary=need_mosquitto()) as broker,
        MailSink() as smtp,
    ):
        spy = Connection(BrokerConfig("127.0.0.1", broker.port, client_id="spy"))
        await spy.connect()
        await spy.subscribe("sosbeacon/#")
        services = {"notify.services": {"email": smtp.url()}, "relay.keys_dir": str(keys)}
        async with relay_rig(relay_settings(tmp_path, broker.port, **services)) as relay:
            text = device_config(tmp_path / "data", broker.port).replace(
                "[uplink]\n", f'[uplink]\nkey_file = "{keys / "t1.key"}"\n'
            )
            dcfg = config_mod.load(text=text)
            async with sim_daemon(dcfg) as daemon:
                assert (await request(dcfg.socket_path, {"cmd": "sos-start", "now": True}))["ok"]
                (mail,) = await smtp.wait(1, within=30)  # the relay opened the sos-start
                assert "SOS: Sam needs help" in mail.subject and "Live route: " in mail.body
                links = await relay.links()
                # the page's "I'm on it": a sealed command, a sealed reply, confirmed
                token = links[0].rsplit("/", 1)[1]
                assert (await relay.http.post(f"/s/{token}/ack")).json()["ok"]
                await eventually(
                    lambda: any(
                        e.kind.value == "sos" and e.data.get("what") == "acknowledged"
                        for e in daemon.events.recent()
                    )
                )
                # the relay's receipt reached the device, sealed, and opened there
                assert daemon.uplink is not None
                await eventually(lambda: (daemon.uplink.delivery.receipt or {}).get("sos_stored"))
                # forgeries: a clear SOS to the relay, a clear command to the device
                forger = Connection(BrokerConfig("127.0.0.1", broker.port, client_id="f"))
                await forger.connect()
                fake = encode_sos("f" * 16, 1, sos_start("feedfeedfeedfeed"))
                await forger.publish("sosbeacon/t1/sos", fake)
                await forger.publish("sosbeacon/t1/cmd", dumps({"cmd": "cancel", "id": "x1"}))
                await forger.disconnect()
                await eventually(lambda: relay.relay.counters.unsealed >= 1)
                await eventually(lambda: daemon.uplink.stats.unsealed_refused >= 1)
                assert (await request(dcfg.socket_path, {"cmd": "status"}))["state"] == "active"
                assert len(await relay.store.list_links()) == 1  # the forged SOS made none
        # what the broker carried on our topics: sealed bytes only (status aside)
        seen = []
        while not spy.messages.empty():
            m = spy.messages.get_nowait()
            seen.append(m)
        ours = [m for m in seen if m.payload and not m.topic.endswith("/status")]
        device_sent = [
            m for m in ours if m.topic.split("/")[-1] in ("track", "sos") and m.payload != fake
        ]
        assert device_sent and all(is_sealed(m.payload) for m in device_sent)
        for m in device_sent:
            props = dict(m.user_properties)
            assert "msg_id" in props and "seq" in props  # the ledger still works
        for m in [m for m in ours if m.topic in ("sosbeacon/t1/receipt", "sosbeacon/t1/cmd")]:
            if m.payload != dumps({"cmd": "cancel", "id": "x1"}):
                assert is_sealed(m.payload)
        for m in ours:
            if is_sealed(m.payload):
                assert b"Alice" not in m.payload and b"55.9" not in m.payload
        spy.close()
        # the key never appears in the relay's log or the device's status
        assert key.hex() not in str(relay.relay.counters)


async def test_a_rotation_loses_nothing_of_a_backlog_stored_before_it(tmp_path: Path) -> None:
    """Records are sealed when sent, not when stored: a backlog stored under key A goes
    out under key B once the device has B. A message already sealed under A (queued at
    the broker before the switch) still opens while the relay keeps A as ``t1.old.key``."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    old = key_file(keys / "dev1.old.key")
    new = key_file(keys / "dev1.key")
    key_file(tmp_path / "device.key", new)
    cfg = UplinkConfig(
        device_id="dev1", batch_count=1, backoff_max=2.0, key_file=str(tmp_path / "device.key")
    )
    async with rig(tmp_path, config=cfg, start=False) as r:
        sess = "rotation00000001"
        await r.outbox.add(sos_start(sess, contacts=[]))
        for i in range(50):
            await r.outbox.add(fix_record(i, session=sess))
        held = DeviceKeys(keys)
        # one sealed under the old key, as the broker might still hold it
        before = Record(RecordKind.SOS_ACK, sos_start(sess).time, {"by": "x"}, Priority.SOS, sess)
        queued = seal(old, encode_sos("a" * 16, 1, before))
        assert decode_sos(held.open("dev1", queued)).kind == "sos-ack"
        r.start_uplink()
        await r.uplink.drained()
        assert r.uplink.limit.max_bytes <= cfg.max_message_bytes - 52

        def arrived() -> list[Any]:
            got = [d for d in r.receiver.history if d.topic.split("/")[-1] in ("track", "sos")]
            seqs = set()
            for d in got:
                for part in dict(d.user_properties)["seq"].split(","):
                    a, _, b = part.partition("-")
                    seqs |= set(range(int(a), int(b or a) + 1))
            return got if seqs == set(range(1, 52)) else []

        got = await eventually(arrived)
        assert got and all(is_sealed(d.payload) for d in got)
        opened = [held.open("dev1", d.payload) for d in got]  # every one under the new key
        assert all(unseal([new], d.payload) for d in got)
        assert len(opened) == len(got)
        # the relay seals back with the key the device last used
        assert unseal([new], held.seal("dev1", b"x"))[0] == b"x"


async def test_with_sealed_payloads_no_owntracks_location_goes_in_the_clear(
    tmp_path: Path,
) -> None:
    key_file(tmp_path / "device.key")
    cfg = UplinkConfig(device_id="dev1", batch_count=1, key_file=str(tmp_path / "device.key"))
    async with rig(tmp_path, config=cfg) as r:
        assert r.uplink.owntracks_topic == ""
        await r.outbox.add(fix_record(0, session="s1"))
        await r.uplink.drained()
        assert not [d for d in r.receiver.history if d.topic.startswith("owntracks/")]


def owntracks_open(passphrase: str, message: bytes) -> dict[str, Any]:
    """A decrypter written from OwnTracks' description alone (not our code): the key is
    the passphrase's UTF-8 bytes, cut to 32 and padded with zero bytes; ``data`` is
    standard Base64 of the 24-byte nonce followed by libsodium's secretbox output."""
    import base64
    import json

    from nacl.bindings import crypto_secretbox_open

    envelope = json.loads(message)
    assert set(envelope) == {"_type", "data"} and envelope["_type"] == "encrypted"
    raw = base64.b64decode(envelope["data"], validate=True)
    key = passphrase.encode()[:32] + b"\0" * max(0, 32 - len(passphrase.encode()))
    return dict(json.loads(crypto_secretbox_open(raw[24:], raw[:24], key)))


def test_the_owntracks_envelope_opens_as_owntracks_describes_it(shared_dir: Path) -> None:
    import base64
    import json

    import jsonschema
    from nacl.secret import SecretBox

    from sosbeacon.device.wire import owntracks_encrypted, owntracks_key

    loc = {"_type": "location", "tid": "b1", "tst": 1795341600, "lat": 55.94, "lon": -3.16}
    for passphrase in ("short", "x" * 40, "ünïcode-pässphrase-of-32-chars!!"):
        ours = owntracks_encrypted(owntracks_key(passphrase), json.dumps(loc).encode())
        assert owntracks_open(passphrase, ours) == loc
        schema = json.loads((shared_dir / "owntracks-schema" / "encryption.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(json.loads(ours))
    # a vector made with PyNaCl's SecretBox directly, a fixed nonce: the same bytes
    key = b"correct horse battery staple".ljust(32, b"\0")
    nonce = bytes(range(24))
    made = bytes(SecretBox(key).encrypt(b'{"_type":"lwt","tst":1}', nonce))
    vector = json.dumps({"_type": "encrypted", "data": base64.b64encode(made).decode()})
    assert owntracks_open("correct horse battery staple", vector.encode()) == {
        "_type": "lwt", "tst": 1,
    }  # fmt: skip
    assert owntracks_key("correct horse battery staple") == key
    assert owntracks_key("a" * 50) == b"a" * 32


async def test_owntracks_consumers_get_the_location_in_owntracks_own_encryption(
    tmp_path: Path,
) -> None:
    from tests.test_uplink import a_fix, controller

    key_file(tmp_path / "device.key")
    phrase = tmp_path / "ot-passphrase"
    phrase.write_text("Tr0ub4dor&3-a-long-random-phrase\n")
    phrase.chmod(0o600)
    cfg = UplinkConfig(
        device_id="dev1", batch_count=1, key_file=str(tmp_path / "device.key"),
        owntracks_passphrase_file=str(phrase),
    )  # fmt: skip
    async with rig(tmp_path, config=cfg) as r:
        ot = r.uplink.owntracks_topic
        assert ot  # on again: in OwnTracks' own encryption
        ctl = controller(r.outbox)
        await ctl.on_fix(a_fix(0))
        await ctl.start(trigger="cli", now=True)
        await r.receiver.wait_until(lambda: ot in r.receiver.latest)
        loc = owntracks_open("Tr0ub4dor&3-a-long-random-phrase", r.receiver.latest[ot].payload)
        assert loc["_type"] == "location" and loc["tag"] == "SOS"
        assert b"55.94" not in r.receiver.latest[ot].payload
        await ctl.stop(trigger="cli")
        await r.receiver.wait_until(lambda: r.receiver.latest[ot].payload == b"")
        end = r.receiver.latest[f"{ot}/event"].payload
        assert owntracks_open("Tr0ub4dor&3-a-long-random-phrase", end)["desc"] == "SOS ended"
