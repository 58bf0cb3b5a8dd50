"""sos-relay's configuration and command line: every problem named by its key, no
secret printed, and the links an operator can list and revoke."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sosbeacon.device.tomlconf import ConfigError
from sosbeacon.device.wire import Received
from sosbeacon.relay import config as relay_config
from sosbeacon.relay.cli import main, open_store
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "sos-relay.toml"


def example_text(tmp_path: Path) -> str:
    secret = tmp_path / "mqtt-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    return EXAMPLE.read_text().replace("/etc/sosbeacon/sos-relay.mqtt-password", str(secret))


def test_the_example_is_valid_and_says_what_it_holds(tmp_path: Path) -> None:
    cfg = relay_config.load(text=example_text(tmp_path))
    assert cfg.link_base() == "https://sos.example.org/s/"
    assert cfg.broker_config().tls is not None and cfg.broker_config().password == "hunter2"
    assert set(cfg.notify.services) == {"email", "tgram", "ntfy"}
    assert cfg.database_url().startswith("sqlite+aiosqlite:////var/lib/sos-relay/")


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"relay.public_url": "http://sos.example.org"}, "relay.public_url: links travel"),
        ({"relay.public_url": "sos.example.org"}, "relay.public_url: expected the address"),
        ({"mqtt.broker": "http://x:1"}, "mqtt.broker: expected mqtt://"),
        ({"mqtt.group": "a/b"}, "mqtt.group: 1 to 64 letters"),
        ({"mqtt.prefix": "a/#"}, "mqtt.prefix: invalid topic prefix"),
        ({"database.url": "mysql://x/y"}, "database.url: expected sqlite+aiosqlite"),
        ({"web.listen": "8080"}, "web.listen: expected host:port"),
        ({"web.tiles": "http://tiles.example.org/{z}/{x}/{y}.png"}, "web.tiles: expected an https"),
        ({"notify.services": {"email": "smtp.example.org"}}, "notify.services.email: expected"),
        ({"notify.services": {"Bad Kind": "json://x"}}, "notify.services.Bad Kind: a kind"),
        ({"notify.services": {"email": 5}}, "notify.services.email: expected a string"),
        ({"notify.retry_min": 10.0, "notify.retry_max": 1.0}, "notify.retry_max: must not"),
        ({"notify.attempts": 0}, "notify.attempts: must be from 1"),
        ({"relay.colour": "red"}, "relay.colour: unknown key"),
    ],
)
def test_every_problem_names_its_key(override: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        relay_config.load(text="", overrides=override)
    assert problem in str(err.value)


def test_check_config_prints_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "relay.toml"
    conf.write_text(example_text(tmp_path))
    assert main(["--config", str(conf), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    for secret in ("PASSWORD", "BOT_TOKEN", "hunter2"):
        assert secret not in out, secret
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay]\npublic_url = 5\n")
    assert main(["--config", str(bad), "check-config"]) == 2
    assert "relay.public_url: expected a string" in capsys.readouterr().err


def test_links_are_listed_and_revoked_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "relay.toml"
    conf.write_text(f'[relay]\ndata_dir = "{tmp_path / "data"}"\n')
    cfg = relay_config.load(conf)
    start = Received(
        "box1", 1, "sos-start", time.time(),
        {"contacts": [{"name": "Alice", "reach": "alice@example.org"}], "owner": "Sam"},
        "sess1", False,
    )  # fmt: skip

    async def seed() -> None:
        store = open_store(cfg)
        await store.create()
        await store.ingest("dev1", [start], now=time.time())
        await store.close()

    asyncio.run(seed())
    assert main(["--config", str(conf), "links", "list"]) == 0
    listed = capsys.readouterr().out
    assert "dev1" in listed and "Alice" in listed and "active" in listed
    assert "alice@example.org" not in listed  # the address is not the operator's business
    link_id = listed.split()[0]
    assert main(["--config", str(conf), "links", "revoke", link_id]) == 0
    assert "410" in capsys.readouterr().out
    assert main(["--config", str(conf), "links", "revoke", link_id]) == 1  # not twice
    assert main(["--config", str(conf), "links", "list"]) == 0
    assert "revoked" in capsys.readouterr().out


def test_a_taken_port_or_an_unreachable_database_is_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from sosbeacon.sim.broker import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "relay.toml"
        conf.write_text(
            f'[relay]\ndata_dir = "{tmp_path / "data"}"\n[web]\nlisten = "127.0.0.1:{port}"\n'
        )
        assert main(["--config", str(conf), "run"]) == 1
    err = capsys.readouterr().err
    assert f"web.listen 127.0.0.1:{port}: cannot listen there" in err and "Traceback" not in err
    conf.write_text(
        f'[relay]\ndata_dir = "{tmp_path / "data"}"\n[database]\n'
        f'url = "postgresql+asyncpg://relay:s3cret@127.0.0.1:{free_port()}/nowhere"\n'
    )
    assert main(["--config", str(conf), "run"]) == 1
    err = capsys.readouterr().err
    assert "the database at postgresql+asyncpg://relay:***@127.0.0.1:" in err
    assert "s3cret" not in err and "check database.url" in err


def test_sos_relay_without_the_relay_extra_says_what_to_install() -> None:
    """A device installs sosbeacon without the relay's dependencies: the command then
    says how to get them (one line), never a traceback."""
    import subprocess
    import sys

    probe = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from sosbeacon.relay.launch import main\n"
        "raise SystemExit(main(['check-config']))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "pip install 'sosbeacon[relay]'" in out.stderr and "Traceback" not in out.stderr
