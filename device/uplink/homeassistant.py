"""Home Assistant MQTT discovery (optional, ``[homeassistant]``): the beacon appears in
Home Assistant as one device with three entities, without any YAML.

* ``device_tracker`` (``source_type: gps``): its position from
  ``<prefix>/<id>/ha/location``, retained, ``{"latitude", "longitude", "gps_accuracy"}``
  through ``json_attributes_topic``. Like every location it exists only while location
  is shared (during an SOS, or with routine tracking opted in): it is published with the
  OwnTracks view and withdrawn (empty, retained) when the SOS ends.
* a battery ``sensor`` (``device_class: battery``, %), from ``<prefix>/<id>/ha/battery``;
* an SOS-active ``binary_sensor`` (``device_class: safety``), ``ON``/``OFF`` on
  ``<prefix>/<id>/ha/sos``.

Each has ``availability_topic`` set to our ``status`` topic (its JSON's ``state``:
``online``/``offline``) and one shared ``device`` block. The configs are published
retained at every connection, and removed (empty retained payloads) by
:meth:`HomeAssistant.forget` (``sosctl purge``). Home Assistant reads these in the
clear, so discovery cannot be combined with ``uplink.key_file`` (the configuration says
so).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from sosbeacon.device.mqtt import Connection, MqttError
from sosbeacon.device.wire import Topics, dumps

log = logging.getLogger(__package__)


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    #: announce the beacon to Home Assistant (MQTT discovery)
    enabled: bool = False
    #: Home Assistant's discovery prefix (its MQTT integration's setting)
    discovery_prefix: str = "homeassistant"


def node_id(device_id: str) -> str:
    """The device id as Home Assistant's discovery topics allow it: [a-zA-Z0-9_-]."""
    return "sosbeacon_" + re.sub(r"[^A-Za-z0-9_-]", "_", device_id)


def discovery(
    device_id: str, topics: Topics, prefix: str, version: str = ""
) -> list[tuple[str, dict[str, Any]]]:
    """Every entity's discovery (config topic, payload)."""
    node = node_id(device_id)
    ha = f"{topics.base}/ha"
    common: dict[str, Any] = {
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [node],
            "name": f"SOS beacon {device_id}",
            "manufacturer": "sosbeacon",
            "model": "sosbeacon",
            **({"sw_version": version} if version else {}),
        },
    }
    return [
        (
            f"{prefix}/device_tracker/{node}/location/config",
            {
                **common, "name": "Location", "unique_id": f"{node}_location",
                "source_type": "gps", "json_attributes_topic": f"{ha}/location",
                "icon": "mdi:crosshairs-gps",
            },
        ),
        (
            f"{prefix}/sensor/{node}/battery/config",
            {
                **common, "name": "Battery", "unique_id": f"{node}_battery",
                "device_class": "battery", "unit_of_measurement": "%",
                "state_class": "measurement", "state_topic": f"{ha}/battery",
                "value_template": "{{ value_json.pct }}",
            },
        ),
        (
            f"{prefix}/binary_sensor/{node}/sos/config",
            {
                **common, "name": "SOS active", "unique_id": f"{node}_sos",
                "device_class": "safety", "state_topic": f"{ha}/sos",
                "payload_on": "ON", "payload_off": "OFF",
            },
        ),
    ]  # fmt: skip


class HomeAssistant:
    def __init__(self, config: HomeAssistantConfig, topics: Topics, device_id: str) -> None:
        self.config = config
        self.topics = topics
        self.entities = discovery(device_id, topics, config.discovery_prefix)
        self.location_topic = f"{topics.base}/ha/location"
        self.battery_topic = f"{topics.base}/ha/battery"
        self.sos_topic = f"{topics.base}/ha/sos"

    async def _put(self, conn: Connection, topic: str, payload: bytes) -> bool:
        try:
            rc = await conn.publish(topic, payload, retain=True)
        except MqttError:
            return False
        if rc.is_failure:
            log.warning("the broker refused %s for Home Assistant: %s", topic, rc)
            return False
        return True

    async def announce(self, conn: Connection) -> None:
        for topic, payload in self.entities:
            await self._put(conn, topic, dumps(payload))

    async def location(self, conn: Connection, loc: dict[str, Any]) -> None:
        """The position shown (an OwnTracks location's fields)."""
        attrs = {"latitude": loc["lat"], "longitude": loc["lon"]}
        if loc.get("acc") is not None:
            attrs["gps_accuracy"] = loc["acc"]
        await self._put(conn, self.location_topic, dumps(attrs))

    async def battery(self, conn: Connection, pct: float) -> None:
        await self._put(conn, self.battery_topic, dumps({"pct": round(pct)}))

    async def sos(self, conn: Connection, active: bool) -> None:
        await self._put(conn, self.sos_topic, b"ON" if active else b"OFF")

    async def withdraw_location(self, conn: Connection) -> None:
        await self._put(conn, self.location_topic, b"")

    async def forget(self, conn: Connection) -> bool:
        """Remove the device from Home Assistant: every config and state withdrawn."""
        ok = True
        for topic in [t for t, _ in self.entities] + [
            self.location_topic, self.battery_topic, self.sos_topic,
        ]:  # fmt: skip
            with contextlib.suppress(MqttError):
                ok = await self._put(conn, topic, b"") and ok
        return ok
