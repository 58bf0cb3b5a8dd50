"""Home Assistant MQTT discovery: every payload uses only keys Home Assistant documents
for its component (device_tracker, sensor, binary_sensor of the MQTT integration), the
entities follow an SOS through a real broker, the location exists only while shared,
and a purge removes the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sosbeacon.device import config as config_mod
from sosbeacon.device.mqtt import BrokerConfig, Connection, Inbound
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.device.uplink.homeassistant import HomeAssistantConfig, discovery
from sosbeacon.device.wire import Topics
from tests.helpers import eventually
from tests.mqtt_env import rig
from tests.test_uplink import a_fix, controller

#: the discovery keys Home Assistant documents for each (its MQTT integration's pages:
#: device_tracker.mqtt, sensor.mqtt, binary_sensor.mqtt; the shared availability and
#: device keys)
COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "enabled_by_default", "encoding", "entity_category", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "payload_available", "payload_not_available", "platform", "qos", "unique_id",
    "default_entity_id", "entity_picture",
}  # fmt: skip
DOCUMENTED = {
    "device_tracker": COMMON | {
        "payload_home", "payload_not_home", "payload_reset", "source_type", "state_topic",
        "value_template",
    },
    "sensor": COMMON | {
        "device_class", "expire_after", "force_update", "last_reset_value_template",
        "options", "state_class", "state_topic", "suggested_display_precision",
        "unit_of_measurement", "value_template",
    },
    "binary_sensor": COMMON | {
        "device_class", "expire_after", "force_update", "off_delay", "payload_off",
        "payload_on", "state_topic", "value_template",
    },
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
    "model", "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
REQUIRED = {"device_tracker": set(), "sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}


def test_every_discovery_payload_uses_only_documented_keys() -> None:
    entities = discovery("beacon-01", Topics.for_device("beacon-01"), "homeassistant", "0.1.0")
    assert [t.split("/")[1] for t, _ in entities] == ["device_tracker", "sensor", "binary_sensor"]
    devices = []
    for topic, payload in entities:
        prefix, component, node, _object_id, leaf = topic.split("/")
        assert (prefix, node, leaf) == ("homeassistant", "sosbeacon_beacon-01", "config")
        assert set(payload) <= DOCUMENTED[component], set(payload) - DOCUMENTED[component]
        assert REQUIRED[component] <= set(payload)
        assert set(payload["device"]) <= DEVICE_KEYS
        assert payload["availability_topic"] == "sosbeacon/beacon-01/status"
        assert payload["unique_id"].startswith("sosbeacon_beacon-01_")
        devices.append(payload["device"])
    assert devices[0] == devices[1] == devices[2]  # one shared device block
    tracker = entities[0][1]
    assert tracker["source_type"] == "gps"
    assert tracker["json_attributes_topic"] == "sosbeacon/beacon-01/ha/location"
    battery = entities[1][1]
    assert (battery["device_class"], battery["unit_of_measurement"]) == ("battery", "%")


def test_discovery_with_sealed_payloads_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    text = (
        f'[device]\nid = "b1"\n[[sos.contacts]]\nname = "A"\n[uplink]\nkey_file = "{key}"\n'
        "[homeassistant]\nenabled = true\n"
    )
    with pytest.raises(config_mod.ConfigError, match=r"homeassistant\.enabled"):
        config_mod.load(text=text)


async def test_the_entities_follow_an_sos_and_a_purge_removes_them(tmp_path: Path) -> None:
    cfg = UplinkConfig(device_id="dev1", batch_count=1, backoff_max=2.0)
    ha = HomeAssistantConfig(enabled=True)
    async with rig(tmp_path, config=cfg, homeassistant=ha) as r:
        watcher = Connection(BrokerConfig("127.0.0.1", r.broker.port, client_id="ha"))
        await watcher.connect()
        await watcher.subscribe("homeassistant/#")
        await watcher.subscribe("sosbeacon/dev1/ha/#")
        seen: dict[str, bytes] = {}
        history: list[Inbound] = []

        def pump() -> dict[str, bytes]:
            while not watcher.messages.empty():
                m = watcher.messages.get_nowait()
                history.append(m)
                seen[m.topic] = m.payload
            return seen

        await eventually(lambda: len([t for t in pump() if t.endswith("/config")]) == 3)
        ctl = controller(r.outbox)
        await ctl.on_fix(a_fix(0))  # no SOS, no routine tracking: no location anywhere
        await ctl.start(trigger="cli", now=True)
        await eventually(lambda: pump().get("sosbeacon/dev1/ha/sos") == b"ON")
        loc = await eventually(lambda: pump().get("sosbeacon/dev1/ha/location"))
        attrs = json.loads(loc)
        assert set(attrs) <= {"latitude", "longitude", "gps_accuracy"}
        assert attrs["latitude"] == pytest.approx(55.944)
        locations = [m for m in history if m.topic.endswith("/ha/location")]
        assert all(m.payload for m in locations)  # nothing before the SOS
        await ctl.stop(trigger="cli")
        await eventually(lambda: pump().get("sosbeacon/dev1/ha/sos") == b"OFF")
        await eventually(lambda: pump().get("sosbeacon/dev1/ha/location") == b"")
        assert await r.uplink.forget_home_assistant()
        configs = [t for t in pump() if t.endswith("/config")]
        await eventually(lambda: all(pump().get(t) == b"" for t in configs))
        watcher.close()
