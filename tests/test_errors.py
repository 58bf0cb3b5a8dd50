"""One base for the errors sosbeacon raises on purpose, each still the built-in kind it
is; and the outbox speaks for itself: nothing outside it sees SQLite's errors."""

from __future__ import annotations

import pytest

from device.control import NotRunning
from device.errors import SosbeaconError
from device.mqtt import MqttError
from device.outbox import OutboxError, OutboxFull, OutboxUnavailable
from device.sos import SosRefused
from device.tomlconf import ConfigError
from device.wire import AddressError, CommandError
from relay.web import WebError
from sim.drill import ScenarioError
from tests.conftest import REPO
from tests.test_layering import imported_modules


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConfigError, ValueError), (CommandError, ValueError), (AddressError, ValueError),
        (ScenarioError, ValueError), (OutboxError, OSError), (OutboxFull, OSError),
        (OutboxUnavailable, OSError), (NotRunning, ConnectionError), (WebError, OSError),
        (MqttError, Exception), (SosRefused, Exception),
    ],
)  # fmt: skip
def test_every_error_of_ours_has_the_one_base_and_its_builtin_kind(
    error: type[BaseException], kind: type[BaseException]
) -> None:
    assert issubclass(error, SosbeaconError) and issubclass(error, kind)


def test_no_module_beside_the_outbox_names_sqlite() -> None:
    """The outbox, its storage helpers and its salvage are the only ones that know."""
    knows = {"outbox.py", "storage.py", "salvage.py"}
    naming = [
        p.name
        for p in sorted((REPO / "device").glob("*.py"))
        if p.name not in knows and "sqlite3" in imported_modules(p)
    ]
    assert naming == []
