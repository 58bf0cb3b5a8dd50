"""Configuration: the shipped example is valid and complete; every error names its key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from sosbeacon.device.config import Config, load
from sosbeacon.device.privacy import Precision
from sosbeacon.device.tomlconf import ConfigError
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "sosbeacon.toml"
MINIMAL = """
[device]
id = "b1"
[[sos.contacts]]
name = "Alice"
"""


def test_the_shipped_example_is_valid_and_names_every_section() -> None:
    cfg = load(EXAMPLE)
    assert cfg.device.id == "beacon-01" and cfg.sos.contacts[0].name == "Alice"
    assert cfg.broker_config().tls is not None and cfg.broker_config().port == 8883
    table = tomllib.loads(EXAMPLE.read_text())
    sections = {f.name for f in dataclasses.fields(Config)} - {"source", "sections"}
    assert sections <= set(table), sections - set(table)
    # the example documents every key of the simple sections
    for name in ("device", "sos", "privacy", "gesture", "gps", "button", "network", "outbox"):
        keys = {f.name for f in dataclasses.fields(getattr(cfg, name))}
        assert keys <= set(table[name]), (name, keys - set(table[name]))


def test_minimal_configuration_and_defaults() -> None:
    cfg = load(text=MINIMAL)
    assert cfg.privacy.precision is Precision.EXACT and cfg.uplink_config().device_id == "b1"
    b = cfg.broker_config()
    assert (b.host, b.port, b.tls, b.client_id) == ("localhost", 1883, None, "b1")


def test_every_problem_is_reported_with_its_key() -> None:
    text = (
        MINIMAL
        + """
[sos]
countdown = "five"
[privacy]
precision = "street"
[gps]
baud = -9600
sorce = "gpsd"
[mqtt]
broker = "http://example.org"
[uplink]
batch_count = 1.5
"""
    )
    with pytest.raises(ConfigError) as err:
        load(text=text)
    msg = str(err.value)
    for expected in (
        "sos.countdown: expected a number, got a string ('five')",
        "privacy.precision: expected one of 'exact', '100m', '1km', got a string ('street')",
        "gps.baud: must not be negative, got -9600",
        "gps.sorce: unknown key",
        "mqtt.broker: expected mqtt://host[:port] or mqtts://host[:port]",
        "uplink.batch_count: expected a whole number, got float (1.5)",
    ):
        assert expected in msg, (expected, msg)
    assert len(err.value.problems) == 6


def test_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(text="[device\nid=1")
    with pytest.raises(ConfigError, match=r"device\.id: required"):
        load(text="[[sos.contacts]]\nname='A'\n")
    with pytest.raises(ConfigError, match=r"does not exist: copy examples/sosbeacon\.toml"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"sos.contacts\[0\].name: required"):
        load(text="[device]\nid='b'\n[[sos.contacts]]\nreach='x'\n")
    with pytest.raises(ConfigError, match="gesture: "):
        load(text=MINIMAL + "[gesture]\ndebounce = 5.0\n")  # the detector's own rule
    with pytest.raises(ConfigError, match="must not contain '/'"):
        load(text=MINIMAL.replace('"b1"', '"a/b"'))
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: /nope does not exist"):
        load(text=MINIMAL + "[mqtt]\nbroker='mqtts://h'\n[mqtt.tls]\nca_file='/nope'\n")


def test_overrides_and_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o604)
    with pytest.raises(ConfigError) as err:  # a secret others may read is refused
        load(text=MINIMAL + f"[mqtt]\npassword_file = '{secret}'\n")
    assert f"run chmod 600 {secret}" in str(err.value) and "s3cret" not in str(err.value)
    secret.chmod(0o600)
    cfg = load(
        text=MINIMAL + f"[mqtt]\npassword_file = '{secret}'\n",
        overrides={"device.id": "b2", "mqtt.broker": "mqtts://user@broker.example:9999"},
    )
    b = cfg.broker_config()
    assert (cfg.device.id, b.host, b.port, b.username, b.password) == (
        "b2",
        "broker.example",
        9999,
        "user",
        "s3cret",
    )
    assert "s3cret" not in repr(b)  # never in a log line


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[sos]\nretention = inf", "sos.retention: expected a finite number, got inf"),
        ("[sos]\ncountdown = nan", "sos.countdown: expected a finite number"),
        ("[uplink]\nbackoff_max = nan", "uplink.backoff_max: expected a finite number"),
        ("[gps]\nrate_hz = inf", "gps.rate_hz: expected a finite number"),
        ("[sos]\nretention = 1e300", "sos.retention: must be from 0 to"),
        ("[uplink]\nbatch_count = 0", "uplink.batch_count: must be from 1"),
        ('[mqtt]\nbroker = "mqtt://host:99999"', "a port from 1 to 65535"),
        ('[mqtt]\nbroker = "mqtt://host:abc"', "a port from 1 to 65535"),
        ('[gps]\ngpsd = "nonsense"', "gps.gpsd: expected host:port"),
        ('[gps]\ngpsd = "host:0"', "gps.gpsd: expected host:port"),
        ('[uplink]\nowntracks_topic = "owntracks/#/x"', "not a topic one can publish to"),
        ('[uplink]\nowntracks_topic = "a/+/b"', "not a topic one can publish to"),
    ],
)
def test_values_that_would_trip_run_are_refused(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(text=MINIMAL + text)
    assert error in str(exc.value)


def test_a_table_where_a_value_is_expected_and_the_reverse() -> None:
    with pytest.raises(ConfigError, match="device: expected a table"):
        load(text="device = 5\n")


def test_a_file_that_is_not_utf8_names_the_byte_and_never_its_content(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_bytes(b'[device]\nid = "b1"\n[mqtt]\npassword = "hunter2\xff"\n')
    with pytest.raises(ConfigError) as exc:
        load(conf)
    text = str(exc.value)
    assert "not UTF-8: byte 45 (line 4)" in text and "hunter2" not in text


def test_secrets_never_appear_in_errors() -> None:
    for text in (
        '[mqtt]\nbroker = "mqtt://u:hunter2@host:99999"',
        "[mqtt]\npassword = 7",
    ):
        with pytest.raises(ConfigError) as exc:
            load(text=MINIMAL + text)
        assert "hunter2" not in str(exc.value) and "7)" not in str(exc.value)


def test_the_defaults_lie_within_the_ranges() -> None:
    cfg = load(text=MINIMAL)  # every default number is checked against RANGES
    assert cfg.sos.retention == 72 * 3600


def test_check_config_redacts_and_warns_when_not_armed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sosbeacon.device.cli import sosd

    conf = tmp_path / "c.toml"
    conf.write_text(
        '[device]\nid = "b1"\n[mqtt]\nbroker = "mqtt://u:hunter2@host"\npassword = "s3cret"\n'
    )
    assert sosd(["check-config", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cret" not in out and "mqtt://u:***@host" in out
    assert "SOS is NOT ARMED" in out and "SIGHUP" in out


@pytest.mark.parametrize(
    "reach",
    [
        "tgram://123456:ABCdef@telegram",  # a service URL, with its bot token
        "mailtos://alice:hunter2@smtp.example.org",
        "alice:hunter2@example.org",
        "not an address",
    ],
)
def test_a_contact_address_that_is_a_credential_or_nothing_is_refused(reach: str) -> None:
    with pytest.raises(ConfigError, match=r"sos\.contacts\[0\]\.reach: ") as err:
        load(text=MINIMAL.replace('name = "Alice"', f'name = "Alice"\nreach = "{reach}"'))
    assert "hunter2" not in str(err.value) and "ABCdef" not in str(err.value)


def test_contact_addresses_of_every_form_are_accepted() -> None:
    reach = "alice@example.org, +44 7700 900123, tgram:123456, ntfy:family-sos"
    cfg = load(text=MINIMAL.replace('name = "Alice"', f'name = "Alice"\nreach = "{reach}"'))
    assert cfg.sos.contacts[0].reach == reach


def test_the_modem_backend_is_at_on_a_port_modemmanager_or_none() -> None:
    from sosbeacon.device.config import ModemKind

    assert load(text=MINIMAL).modem.kind is ModemKind.NONE  # no port: no SMS
    on_port = load(text=MINIMAL + '[modem]\nport = "/dev/ttyUSB2"\n')
    assert on_port.modem.kind is ModemKind.AT
    mm = load(text=MINIMAL + '[modem]\nbackend = "modemmanager"\nmm_modem = "356938035643809"\n')
    assert mm.modem.kind is ModemKind.MODEMMANAGER and mm.modem.mm_modem == "356938035643809"
    with pytest.raises(ConfigError) as err:
        load(text=MINIMAL + '[modem]\nbackend = "modemmanager"\nport = "/dev/ttyUSB2"\n')
    assert 'modem.port: not used with modem.backend = "modemmanager"' in str(err.value)
    with pytest.raises(ConfigError) as err:
        load(text=MINIMAL + '[modem]\nbackend = "mm"\n')
    assert "modem.backend: expected one of 'at', 'modemmanager', 'none'" in str(err.value)
