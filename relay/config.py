"""The relay's configuration: a TOML file, validated at start like sosd's (every problem
reported together, each naming its key; unknown keys are errors).

``examples/sos-relay.toml`` is the annotated example and ``docs/relay.md`` the reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sosbeacon.device.brokerconf as brokerconf
from sosbeacon.device.brokerconf import MqttSettings, broker_from
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.tomlconf import (
    ConfigError,
    build,
    host_port,
    out_of_range,
    read,
    redact_url,
    secret_file,
)
from sosbeacon.device.wire import Topics

DEFAULT_CONFIG = Path("/etc/sosbeacon/sos-relay.toml")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    #: the SQLite database (the default) lives here
    data_dir: Path = Path("/var/lib/sos-relay")
    #: what a contact's link starts with: ``<public_url>/s/<token>``. The address the
    #: contacts reach, normally the reverse proxy's https:// address
    public_url: str = "http://localhost:8080"
    #: seconds between sweeps that delete expired sessions
    sweep_interval: float = 60.0
    #: days a deleted link still answers 410 Gone (only its hash is kept), then 404
    gone_days: float = 30.0
    #: the key links are made with; "" is ``<data_dir>/link.key``, made on first start.
    #: Relays that share one database must share this file
    link_key_file: str = ""
    #: end-to-end encryption: a directory (0700) of the devices' keys, ``<id>.key``;
    #: "" = payloads in the clear. Set, every device's payloads must be sealed
    keys_dir: str = ""


@dataclass(frozen=True, slots=True)
class RelayMqtt(MqttSettings):
    """The broker as sosd's ``[mqtt]`` describes it (``device.brokerconf``), and what
    only the relay has: the devices' prefix and the shared-subscription group."""

    #: the relay's own client id (each relay instance needs its own)
    client_id: str = "sos-relay"
    #: how long the broker keeps the relay's session while it is down, seconds
    session_expiry: int = 7 * 86400
    #: the devices' topic prefix (their ``uplink.prefix``)
    prefix: str = "sosbeacon"
    #: the shared-subscription group: relays in one group split the messages
    group: str = "sos-relay"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    #: SQLAlchemy URL. Empty: SQLite at ``<relay.data_dir>/relay.db``. PostgreSQL:
    #: ``postgresql+asyncpg://user@host:5432/sosrelay``
    url: str = ""
    #: a file holding the database password (kept out of the URL)
    password_file: str | None = None


@dataclass(frozen=True, slots=True)
class WebSettings:
    #: where the page is served (host:port); put a TLS reverse proxy in front
    listen: str = "127.0.0.1:8080"
    #: map tiles, a Leaflet URL template; "" shows the route on a plain grid
    tiles: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tiles_attribution: str = "© OpenStreetMap contributors"


@dataclass(frozen=True, slots=True)
class NotifySettings:
    #: Apprise service URLs (with their credentials) by the kind of contact address:
    #: ``email`` for e-mail addresses, ``sms`` for phone numbers, and a messenger's
    #: scheme (``tgram``, ``ntfy``, ``matrix``, ``json``, ...) for ``scheme:id``
    services: dict[str, str] = field(default_factory=dict)
    #: retries of a failed send: the first after ``retry_min`` seconds, doubling up to
    #: ``retry_max``, at most ``attempts`` sends in all
    retry_min: float = 5.0
    retry_max: float = 600.0
    attempts: int = 12
    #: seconds one send may take
    timeout: float = 30.0
    #: seconds the alerts of a late SOS start wait (one recorded more than
    #: ``LATE_START`` s before it arrived: the backlog of a device that had no data), so
    #: that an acknowledgement the device took by SMS meanwhile, right behind it in the
    #: backlog, arrives first and that contact is not alerted again
    backlog_hold: float = 2.0


@dataclass(frozen=True, slots=True)
class RelayConfig:
    relay: RelaySettings = field(default_factory=RelaySettings)
    mqtt: RelayMqtt = field(default_factory=RelayMqtt)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    web: WebSettings = field(default_factory=WebSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    source: str = "defaults"

    def database_url(self) -> str:
        url = self.database.url or f"sqlite+aiosqlite:///{self.relay.data_dir / 'relay.db'}"
        if self.database.password_file:
            secret = Path(self.database.password_file).read_text().strip()
            parts = urlsplit(url)
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[-1]
            url = parts._replace(netloc=f"{user}:{secret}@{host}").geturl()
        return url

    def broker_config(self) -> BrokerConfig:
        return broker_from(self.mqtt, self.mqtt.client_id)

    def link_key_path(self) -> Path:
        return Path(self.relay.link_key_file or self.relay.data_dir / "link.key")

    def link_base(self) -> str:
        return self.relay.public_url.rstrip("/") + "/s/"


_DAY = 86400.0
RANGES: dict[str, tuple[float, float]] = {
    "relay.sweep_interval": (1, _DAY),
    "relay.gone_days": (0, 3650),
    "mqtt.session_expiry": (60, 2**32 - 1),  # the relay's session must outlive a restart
    **brokerconf.RANGES,
    "notify.retry_min": (0.1, _DAY),
    "notify.retry_max": (0.1, 7 * _DAY),
    "notify.attempts": (1, 1000),
    "notify.timeout": (1, 600),
    "notify.backlog_hold": (0, 60),
}
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")


def load(
    path: Path | str | None = None,
    *,
    text: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayConfig:
    """Read, validate and return the relay's configuration."""
    source, table = read(path, text, overrides, example="examples/sos-relay.toml")
    errors: list[str] = []
    cfg = build(RelayConfig, table, errors, filled={RelayConfig: {"source": "defaults"}})
    if isinstance(cfg, RelayConfig):
        errors += _check(cfg)
    if errors or not isinstance(cfg, RelayConfig):
        raise ConfigError(source, errors)
    return replace(cfg, source=source)


def _check(cfg: RelayConfig) -> list[str]:
    errors = out_of_range(cfg, RANGES)
    if cfg.relay.keys_dir:
        from sosbeacon.relay.keys import check_dir

        wrong = check_dir(cfg.relay.keys_dir)
        if wrong:
            errors.append(f"relay.keys_dir: {wrong}")
    url = urlsplit(cfg.relay.public_url)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        errors.append(
            "relay.public_url: expected the address contacts open, like "
            f"https://sos.example.org, got {cfg.relay.public_url!r}"
        )
    elif url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
        errors.append(
            "relay.public_url: links travel to people's phones: use https:// (a reverse "
            f"proxy with TLS, see docs/relay.md), got {cfg.relay.public_url!r}"
        )
    m = cfg.mqtt
    errors += brokerconf.problems(m)
    try:
        Topics.for_device("x", m.prefix)
    except ValueError as exc:
        errors.append(f"mqtt.prefix: {exc}")
    if not _GROUP.fullmatch(m.group):
        errors.append(
            f"mqtt.group: 1 to 64 letters, digits, '-' or '_' (a shared-subscription "
            f"name), got {m.group!r}"
        )
    if not m.client_id or len(m.client_id) > 128:
        errors.append("mqtt.client_id: required, at most 128 characters")
    pw = cfg.database.password_file
    wrong = secret_file("database.password_file", pw) if pw else None
    if wrong:
        errors.append(wrong)
    db = cfg.database.url
    if db and not db.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        errors.append(
            "database.url: expected sqlite+aiosqlite:///path/relay.db or "
            f"postgresql+asyncpg://user@host/db, got {redact_url(db)!r}"
        )
    try:
        host_port(cfg.web.listen)
    except ValueError as exc:
        errors.append(f"web.listen: {exc}")
    tiles = cfg.web.tiles
    if tiles and (urlsplit(tiles).scheme != "https" and not tiles.startswith("http://127.")):
        errors.append(f'web.tiles: expected an https:// URL template or "", got {tiles!r}')
    n = cfg.notify
    if n.retry_max < n.retry_min:
        errors.append(f"notify.retry_max: must not be less than notify.retry_min ({n.retry_min:g})")
    for kind, service in n.services.items():
        where = f"notify.services.{kind}"
        if not _SCHEME.fullmatch(kind):
            errors.append(f"{where}: a kind is 'email', 'sms' or a scheme like 'tgram'")
        if "://" not in service:
            errors.append(f"{where}: expected an Apprise URL like mailtos://user:pass@host")
    return errors


def public(cfg: RelayConfig) -> dict[str, Any]:
    """The configuration without secrets, for ``check-config``."""
    out = asdict(cfg)
    for section, key in (("mqtt", "password"),):
        if out[section].get(key):
            out[section][key] = "***"
    out["mqtt"]["broker"] = redact_url(out["mqtt"]["broker"])
    out["database"]["url"] = redact_url(cfg.database.url) if cfg.database.url else ""
    out["notify"]["services"] = {k: _hide_url(v) for k, v in cfg.notify.services.items()}
    out["relay"]["data_dir"] = str(cfg.relay.data_dir)
    return out


def _hide_url(url: str) -> str:
    """An Apprise URL with every credential hidden: password, and for token-style
    services (``tgram://TOKEN/``) the whole part before the host."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    elif parts.scheme not in ("mailto", "mailtos", "json", "jsons", "ntfy", "ntfys"):
        netloc = "***"
    return parts._replace(netloc=netloc, query="***" if parts.query else "").geturl()
