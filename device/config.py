"""The daemon's configuration: a TOML file, validated at start.

Every section maps onto a settings dataclass, field for field (the TOML key is the field
name), so the settings the parts already take are the configuration — nothing is
described twice. :mod:`device.tomlconf` does the reading and the checks by type (every
problem reported together, each naming its key; unknown keys are errors); the rules that
span fields are here. ``examples/sosbeacon.toml`` is the annotated example and
``docs/configuration.md`` the reference.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from sosbeacon.device import brokerconf, tomlconf
from sosbeacon.device.battery import BatteryPolicyConfig
from sosbeacon.device.brokerconf import MqttSettings, broker_from
from sosbeacon.device.gesture import GestureConfig
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Limits
from sosbeacon.device.parts import backends
from sosbeacon.device.privacy import PrivacyConfig
from sosbeacon.device.sms import SmsConfig
from sosbeacon.device.sos import SosConfig
from sosbeacon.device.tomlconf import (
    ConfigError,
    host_port,
    topic_problem,
)
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.device.uplink.homeassistant import HomeAssistantConfig
from sosbeacon.device.voice import VoiceConfig
from sosbeacon.device.wire import (
    AddressError,
    KeyFileError,
    Topics,
    addresses,
    parse_address,
    read_key,
    read_passphrase,
)

DEFAULT_CONFIG = Path("/etc/sosbeacon/sosbeacon.toml")


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    #: the device's name in MQTT topics: letters, digits, '-', '_'
    id: str = ""
    #: outbox, control socket and exports live here
    data_dir: Path = Path("/var/lib/sosbeacon")


class GpsKind(enum.StrEnum):
    SERIAL = "serial"
    GPSD = "gpsd"


@dataclass(frozen=True, slots=True)
class GpsSettings:
    source: GpsKind = GpsKind.SERIAL
    #: serial device of the receiver (``source = "serial"``)
    device: str = "/dev/serial0"
    baud: int = 9600
    #: ``host:port`` of gpsd (``source = "gpsd"``)
    gpsd: str = "127.0.0.1:2947"
    #: receiver power commands: "ublox", "mtk", or "none" (never sends any)
    power_commands: str = "ublox"
    #: update rate requested when an SOS wakes the receiver
    rate_hz: float = 1.0
    #: receiver dates before this are flagged (GPS week rollover), ISO date
    date_floor: str = "2025-01-01"


@dataclass(frozen=True, slots=True)
class ButtonSettings:
    enabled: bool = True
    chip: str = "/dev/gpiochip0"
    #: line offset, or a line name such as "GPIO17"
    line: int | str = 17
    bias: str = "pull-up"
    active_low: bool = True
    kernel_debounce: float = 0.0
    #: output lines for the LED and the buzzer; "" for none
    led: int | str = 27
    buzzer: int | str = 22


class BatteryKind(enum.StrEnum):
    SYSFS = "sysfs"
    MAX17048 = "max17048"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class BatterySettings:
    backend: BatteryKind = BatteryKind.SYSFS
    #: sysfs power_supply directory and supply name ("" = the first battery found)
    sysfs_root: str = "/sys/class/power_supply"
    name: str = ""
    i2c_bus: int = 1
    i2c_address: int = 0x36
    #: seconds between readings
    poll_interval: float = 30.0
    policy: BatteryPolicyConfig = field(default_factory=BatteryPolicyConfig)


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    #: NetworkManager connection to bring up when an SOS starts ("" = leave the network)
    connection: str = ""
    #: follow NetworkManager's state (nmcli monitor): the uplink reconnects the moment
    #: the network is back instead of waiting out its backoff
    monitor: bool = True


class ModemKind(enum.StrEnum):
    #: sosd speaks AT to the modem's port itself
    AT = "at"
    #: ModemManager owns the modem; sosd texts through its D-Bus API
    MODEMMANAGER = "modemmanager"
    #: no modem: no SMS
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ModemSettings:
    #: how texts go: "at" (sosd on ``port``; no port, no SMS), "modemmanager", "none"
    backend: ModemKind = ModemKind.AT
    #: the modem's AT port (/dev/serial/by-id/...-if02-port0, /dev/ttyUSB2); "" = none
    port: str = ""
    baud: int = 115200
    #: a file holding the SIM's PIN, readable by sosd only ("" = the SIM has no PIN;
    #: with ModemManager, it unlocks the SIM)
    pin_file: str = ""
    #: ModemManager: which modem, by its IMEI (EquipmentIdentifier); "" = the first
    mm_modem: str = ""
    #: ModemManager: the D-Bus address ("" = the system bus)
    dbus: str = ""

    @property
    def kind(self) -> ModemKind:
        """The backend in use (``at`` without a port is none)."""
        if self.backend is ModemKind.AT and not self.port:
            return ModemKind.NONE
        return self.backend


@dataclass(frozen=True, slots=True)
class Config:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    sos: SosConfig = field(default_factory=SosConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    gesture: GestureConfig = field(default_factory=GestureConfig)
    gps: GpsSettings = field(default_factory=GpsSettings)
    button: ButtonSettings = field(default_factory=ButtonSettings)
    battery: BatterySettings = field(default_factory=BatterySettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    modem: ModemSettings = field(default_factory=ModemSettings)
    #: texting the contacts during an SOS when data does not get through (device.sms)
    sms: SmsConfig = field(default_factory=SmsConfig)
    #: voice notes (device.voice), recorded only with privacy.share_voice
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    #: Home Assistant MQTT discovery (device.uplink.homeassistant)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    #: batching, expiry and backoff (``device_id`` comes from ``device.id``)
    uplink: UplinkConfig = field(default_factory=lambda: UplinkConfig(device_id=""))
    outbox: Limits = field(default_factory=Limits)
    #: the installed backends' own sections (``[sim]``), by name, as each declares it
    #: (device.parts.BackendInfo.section)
    sections: Mapping[str, Any] = field(default_factory=dict)
    #: where it was read from, for messages
    source: str = "defaults"

    # -- derived -----------------------------------------------------------------------

    @property
    def outbox_path(self) -> Path:
        return self.device.data_dir / "outbox.db"

    @property
    def socket_path(self) -> Path:
        return self.device.data_dir / "sosd.sock"

    def uplink_config(self) -> UplinkConfig:
        return replace(self.uplink, device_id=self.device.id)

    def broker_config(self) -> BrokerConfig:
        return broker_from(self.mqtt, self.device.id)


# -- loading -----------------------------------------------------------------------------


def load(
    path: Path | str | None = None,
    *,
    text: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, validate and return the configuration. ``overrides`` are dotted keys
    (``{"device.id": "b1"}``) applied on top of the file, validated the same way."""
    source, table = tomlconf.read(path, text, overrides, example="examples/sosbeacon.toml")
    errors: list[str] = []
    sections: dict[str, Any] = {}
    for name, info in backends().items():
        if info.section is None:
            continue
        own = table.pop(name, {}) if isinstance(table, dict) else {}
        sections[name] = tomlconf.build_section(info.section, own, name, errors)
    cfg = tomlconf.build(Config, table, errors, filled=_FILLED)
    if cfg is not None:
        errors += _check(cfg)
    if errors or not isinstance(cfg, Config):
        raise ConfigError(source, errors)
    return replace(cfg, source=source, sections=sections)


def _check(cfg: Config) -> list[str]:
    """Rules that span fields, or say more than a type can."""
    errors = []
    if cfg.uplink.key_file:
        try:
            read_key(cfg.uplink.key_file)
        except KeyFileError as exc:
            errors.append(f"uplink.key_file: {exc}")
    for key, value in (
        ("voice.device", cfg.voice.device), ("modem.mm_modem", cfg.modem.mm_modem),
        ("modem.dbus", cfg.modem.dbus),
    ):  # fmt: skip
        if any(ord(ch) < 32 for ch in value):
            errors.append(f"{key}: control characters are not allowed, got {value[:80]!r}")
    if cfg.homeassistant.enabled and cfg.uplink.key_file:
        errors.append(
            "homeassistant.enabled: Home Assistant reads its topics in the clear, and "
            "uplink.key_file seals this device's payloads: choose one"
        )
    if not re.fullmatch(r"[A-Za-z0-9_/-]{1,64}", cfg.homeassistant.discovery_prefix):
        errors.append("homeassistant.discovery_prefix: letters, digits, '_', '-' and '/'")
    if cfg.uplink.owntracks_passphrase_file:
        try:
            read_passphrase(cfg.uplink.owntracks_passphrase_file)
        except KeyFileError as exc:
            errors.append(f"uplink.owntracks_passphrase_file: {exc}")
    pin = cfg.modem.pin_file
    wrong = tomlconf.secret_file("modem.pin_file", pin) if pin else None
    if wrong:
        errors.append(wrong)
    if cfg.modem.backend is ModemKind.MODEMMANAGER and cfg.modem.port:
        errors.append(
            'modem.port: not used with modem.backend = "modemmanager" (ModemManager owns '
            "the port); leave it out, or choose modem.mm_modem by IMEI"
        )
    try:
        Topics.for_device(cfg.device.id or "?", cfg.uplink.prefix)
    except ValueError as exc:
        errors.append(f"device.id / uplink.prefix: {exc}")
    if not cfg.device.id:
        errors.append("device.id: required: the device's name in MQTT topics, e.g. beacon-01")
    errors += brokerconf.problems(cfg.mqtt)
    try:
        host_port(cfg.gps.gpsd)
    except ValueError as exc:
        errors.append(f"gps.gpsd: {exc}")
    ot = cfg.uplink.owntracks_topic
    if ot:
        problem = topic_problem(ot)
        if problem:
            errors.append(f'uplink.owntracks_topic: {problem} ("" turns it off)')
    errors += tomlconf.out_of_range(cfg, RANGES)
    u = cfg.uplink
    for key in ("backoff_max", "backoff_max_sos"):
        if getattr(u, key) < u.backoff_min:
            errors.append(
                f"uplink.{key}: must not be less than uplink.backoff_min ({u.backoff_min:g}), "
                f"got {getattr(u, key):g}"
            )
    pol = cfg.battery.policy
    if pol.critical > pol.low:
        errors.append(
            f"battery.policy.critical: must not be above battery.policy.low ({pol.low:g}), "
            f"got {pol.critical:g}"
        )
    for name in ("cadence_ok", "cadence_low", "cadence_critical"):
        c = getattr(pol, name)
        if c.gps_on is not None and c.gps_on > c.gps_cycle:
            errors.append(
                f"battery.policy.{name}.gps_on: must not be longer than its gps_cycle "
                f"({c.gps_cycle:g} s), got {c.gps_on:g}"
            )
    for i, contact in enumerate(cfg.sos.contacts):
        where = f"sos.contacts[{i}].reach"
        for a in addresses(contact.reach):
            try:
                parse_address(a)
            except AddressError as exc:
                errors.append(f"{where}: {exc}")
    try:
        cfg.gesture.validate()
    except ValueError as exc:
        errors.append(f"gesture: {exc}")
    if cfg.gps.power_commands not in ("ublox", "mtk", "none"):
        errors.append(
            f'gps.power_commands: expected "ublox", "mtk" or "none", got {cfg.gps.power_commands!r}'
        )
    try:
        date.fromisoformat(cfg.gps.date_floor)
    except ValueError:
        errors.append(
            f"gps.date_floor: expected an ISO date (2025-01-01), got {cfg.gps.date_floor!r}"
        )
    return errors


_DAY = 86400.0
#: the range of every number (inclusive), so that nothing check-config accepts trips
#: ``run``: a duration of 1e300 s overflows a date, 0 records per message never send.
#: Keys not named here: 0 to 1e9. Patterns as fnmatch.
RANGES: dict[str, tuple[float, float]] = {
    "sos.countdown": (0, 600),
    "sos.min_distance": (0, 100_000),
    "sos.retention": (0, 365 * _DAY),
    "gesture.long_press": (0.1, 60),
    "gesture.presses": (2, 20),
    "gesture.*": (0, 60),
    "gps.baud": (50, 4_000_000),
    "gps.rate_hz": (0.1, 10),
    "button.line": (0, 4095),
    "button.led": (0, 4095),
    "button.buzzer": (0, 4095),
    "button.kernel_debounce": (0, 1),
    "battery.i2c_bus": (0, 255),
    "battery.i2c_address": (0x03, 0x77),
    "battery.poll_interval": (1, _DAY),
    "battery.policy.low": (0, 100),
    "battery.policy.critical": (0, 100),
    "battery.policy.hysteresis": (0, 50),
    "battery.policy.cadence_*.sos_*": (0.1, _DAY),
    "battery.policy.cadence_*": (0, 7 * _DAY),
    **brokerconf.RANGES,
    "modem.baud": (300, 4_000_000),
    "sms.after": (1, 3600),
    "sms.every": (60, _DAY),
    "voice.seconds": (1, 120),
    "voice.bitrate": (6, 64),
    "sms.max_per_session": (1, 1000),
    "uplink.routine_expiry": (1, 2**32 - 1),
    "uplink.batch_count": (1, 1_000_000),
    "uplink.batch_interval": (0, 30 * _DAY),
    "uplink.sos_interval": (0, 3600),
    "uplink.max_batch": (1, 10_000),
    "uplink.max_message_bytes": (1024, 256 * 1024 * 1024),
    "uplink.window": (1, 65535),
    "uplink.inflight_bytes": (1024, 2**31),
    "uplink.relay_window": (0, 10**7),
    "uplink.relay_window_live": (0, 10**7),
    "uplink.relay_patience": (1, 7 * _DAY),
    "uplink.relay_stall": (0.5, 7 * _DAY),
    "uplink.backoff_*": (0.1, _DAY),
    "outbox.max_rows": (100, 10**9),
    "outbox.max_bytes": (64 * 1024, 2**40),
    "outbox.min_free_bytes": (0, 2**40),
    "outbox.reserve_bytes": (0, 64 * 1024 * 1024),
    "outbox.hold_records": (1, 1_000_000),
}


def range_of(key: str) -> tuple[float, float]:
    """The range (inclusive) a number under ``key`` must lie in (:data:`RANGES`)."""
    return tomlconf.range_in(RANGES, key)


#: fields that are not configured in their section (they come from elsewhere)
_FILLED: dict[type, dict[str, Any]] = {
    Config: {"source": "defaults", "sections": {}},
    UplinkConfig: {"device_id": ""},  # from device.id
}
