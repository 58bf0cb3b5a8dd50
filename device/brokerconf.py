"""The ``[mqtt]`` section of a configuration: how to reach the broker, as configured, and
the :class:`device.mqtt.BrokerConfig` it makes. sosd and sos-relay share it, so both read
a broker URL, a password file and TLS settings the same way, and refuse the same
mistakes with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sosbeacon.device.mqtt import BrokerConfig, TlsConfig
from sosbeacon.device.tomlconf import is_file, redact_url, secret_file


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


#: the ranges (inclusive) of the section's numbers, for ``tomlconf.out_of_range``
RANGES: dict[str, tuple[float, float]] = {
    "mqtt.keepalive": (2, 65535),
    "mqtt.connect_timeout": (1, 600),
    "mqtt.session_expiry": (0, 2**32 - 1),
}


def broker_from(m: MqttSettings, client_id: str) -> BrokerConfig:
    """The connection ``m`` describes; ``client_id`` when ``m.client_id`` is empty."""
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
        client_id=m.client_id or client_id,
        username=m.username or unquote(url.username or "") or None,
        password=password,
        tls=tls,
        keepalive=m.keepalive,
        connect_timeout=m.connect_timeout,
        session_expiry=m.session_expiry,
    )


def problems(m: MqttSettings) -> list[str]:
    """What is wrong with the section, each naming its key (``mqtt.…``)."""
    errors = []
    url = urlsplit(m.broker)
    shown = redact_url(m.broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        errors.append(
            f"mqtt.broker: expected mqtt://host[:port] or mqtts://host[:port], got {shown!r}"
        )
    else:
        try:
            port = url.port
        except ValueError:
            port = 0
        if port == 0 or url.path not in ("", "/") or url.query or url.fragment:
            errors.append(
                f"mqtt.broker: expected mqtt://host[:port] with a port from 1 to 65535 and "
                f"nothing after it, got {shown!r}"
            )
    wrong = secret_file("mqtt.password_file", m.password_file) if m.password_file else None
    if wrong:
        errors.append(wrong)
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(m.tls, key)
        if value and not is_file(value):
            errors.append(f"mqtt.tls.{key}: {value[:200]} does not exist")
    if bool(m.tls.cert_file) != bool(m.tls.key_file):
        errors.append("mqtt.tls: cert_file and key_file go together")
    return errors


__all__ = ["RANGES", "MqttSettings", "MqttTls", "broker_from", "problems"]
