"""The daemon's configuration: a TOML file, validated at start.

Every section maps onto a settings dataclass, field for field (the TOML key is the field
name), so the settings the parts already take are the configuration — nothing is
described twice. Validation collects *every* problem and reports them together, each
naming its key and what is expected; unknown keys are errors (a typo must not silently
leave a default in place). ``examples/sosbeacon.toml`` is the annotated example and
``docs/configuration.md`` the reference.
"""

from __future__ import annotations

import enum
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from device.battery import BatteryPolicyConfig
from device.gesture import GestureConfig
from device.mqtt import BrokerConfig, TlsConfig
from device.outbox import Limits
from device.privacy import PrivacyConfig
from device.sos import SosConfig
from device.uplink import UplinkConfig
from device.wire import Topics

DEFAULT_CONFIG = Path("/etc/sosbeacon/sosbeacon.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the configuration:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


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


@dataclass(frozen=True, slots=True)
class MqttTls:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    #: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS); user:password@ allowed
    #: but ``password_file`` keeps the secret out of the configuration
    broker: str = "mqtt://localhost"
    username: str = ""
    password: str = field(default="", repr=False)
    #: a file holding the password (first line), readable by the daemon only
    password_file: str = ""
    client_id: str = ""
    keepalive: int = 30
    connect_timeout: float = 15.0
    session_expiry: int = 24 * 3600
    tls: MqttTls = field(default_factory=MqttTls)


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
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    #: batching, expiry and backoff (``device_id`` comes from ``device.id``)
    uplink: UplinkConfig = field(default_factory=lambda: UplinkConfig(device_id=""))
    outbox: Limits = field(default_factory=Limits)
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


def broker_from(m: MqttSettings, device_id: str) -> BrokerConfig:
    url = urlsplit(m.broker)
    tls_on = url.scheme == "mqtts"
    password = m.password or unquote(url.password or "") or None
    if m.password_file:
        password = Path(m.password_file).read_text().splitlines()[0].strip()
    tls = None
    if tls_on:
        tls = TlsConfig(
            ca_file=m.tls.ca_file or None,
            cert_file=m.tls.cert_file or None,
            key_file=m.tls.key_file or None,
        )
    return BrokerConfig(
        host=url.hostname or "localhost",
        port=url.port or (8883 if tls_on else 1883),
        client_id=m.client_id or device_id,
        username=m.username or unquote(url.username or "") or None,
        password=password,
        tls=tls,
        keepalive=m.keepalive,
        connect_timeout=m.connect_timeout,
        session_expiry=m.session_expiry,
    )


# -- loading -----------------------------------------------------------------------------

_BAD = object()


def load(
    path: Path | str | None = None,
    *,
    text: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, validate and return the configuration. ``overrides`` are dotted keys
    (``{"device.id": "b1"}``) applied on top of the file, validated the same way."""
    source = str(path) if path is not None else "<text>"
    if text is None:
        if path is None:
            raise ValueError("load() needs a path or text")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                source,
                [
                    "the file does not exist: copy examples/sosbeacon.toml there and edit "
                    "it, or pass --config"
                ],
            ) from None
        except OSError as exc:
            raise ConfigError(source, [f"cannot read it: {exc}"]) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = table
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    errors: list[str] = []
    cfg = _build(Config, table, "", errors)
    if cfg is not None:
        errors += _check(cfg)
    if errors or not isinstance(cfg, Config):
        raise ConfigError(source, errors)
    return replace(cfg, source=source)


def _check(cfg: Config) -> list[str]:
    """Rules that span fields, or say more than a type can."""
    errors = []
    try:
        Topics.for_device(cfg.device.id or "?", cfg.uplink.prefix)
    except ValueError as exc:
        errors.append(f"device.id / uplink.prefix: {exc}")
    if not cfg.device.id:
        errors.append("device.id: required: the device's name in MQTT topics, e.g. beacon-01")
    url = urlsplit(cfg.mqtt.broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        errors.append(
            f"mqtt.broker: expected mqtt://host[:port] or mqtts://host[:port], "
            f"got {cfg.mqtt.broker!r}"
        )
    if cfg.mqtt.password_file and not os.access(cfg.mqtt.password_file, os.R_OK):
        errors.append(f"mqtt.password_file: {cfg.mqtt.password_file} cannot be read")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg.mqtt.tls, key)
        if value and not Path(value).is_file():
            errors.append(f"mqtt.tls.{key}: {value} does not exist")
    if bool(cfg.mqtt.tls.cert_file) != bool(cfg.mqtt.tls.key_file):
        errors.append("mqtt.tls: cert_file and key_file go together")
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


#: fields that are not configured in their section (they come from elsewhere)
_FILLED: dict[type, dict[str, Any]] = {
    Config: {"source": "defaults"},
    UplinkConfig: {"device_id": ""},  # from device.id
}


def _build(cls: type, table: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(table, dict):
        errors.append(f"{where or 'the file'}: expected a table ([section]), got {_show(table)}")
        return None
    hints = typing.get_type_hints(cls)
    filled = _FILLED.get(cls, {})
    known = {f.name: f for f in fields(cls) if f.init and f.name not in filled}
    for key in table:
        if key not in known:
            errors.append(
                f"{_join(where, key)}: unknown key (known here: {', '.join(sorted(known))})"
            )
    kwargs: dict[str, Any] = dict(filled)
    for name in known:
        if name not in table:
            f = known[name]
            if f.default is MISSING and f.default_factory is MISSING:
                errors.append(f"{_join(where, name)}: required")
            continue
        value = _coerce(hints[name], table[name], _join(where, name), errors)
        if value is not _BAD:
            kwargs[name] = value
    before = len(errors)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if len(errors) == before:
            errors.append(f"{where or 'the file'}: {exc}")
        return None
    return obj


def _coerce(tp: Any, value: Any, key: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for opt in options:
            trial: list[str] = []
            got = _coerce(opt, value, key, trial)
            if not trial:
                return got
        names = " or ".join(_name(o) for o in options)
        errors.append(f"{key}: expected {names}, got {_show(value)}")
        return _BAD
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {_show(value)}")
            return _BAD
        items = [_coerce(args[0], v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if isinstance(tp, type) and is_dataclass(tp):
        built = _build(tp, value, key, errors)
        return _BAD if built is None else built
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            names = ", ".join(map(repr, allowed))
            errors.append(f"{key}: expected one of {names}, got {_show(value)}")
            return _BAD
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true or false, got {_show(value)}")
            return _BAD
        return value
    if tp in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if tp is int and not isinstance(value, int):
            ok = False
        if not ok:
            errors.append(f"{key}: expected {_name(tp)}, got {_show(value)}")
            return _BAD
        if value < 0:
            errors.append(f"{key}: must not be negative, got {value}")
            return _BAD
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {_show(value)}")
            return _BAD
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            errors.append(f"{key}: expected a path, got {_show(value)}")
            return _BAD
        return Path(value)
    raise TypeError(f"config: no rule for {tp!r} at {key}")  # a bug in the schema


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _name(tp: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _show(value: Any) -> str:
    kind = {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind
