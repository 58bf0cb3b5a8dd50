"""One base for the errors sosbeacon raises on purpose, each still the built-in kind it
is; and the outbox speaks for itself: nothing outside it sees SQLite's errors."""

from __future__ import annotations

import pytest

from sosbeacon.device.control import NotRunning
from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.mqtt import MqttError
from sosbeacon.device.outbox import OutboxError, OutboxFull, OutboxUnavailable
from sosbeacon.device.sos import SosRefused
from sosbeacon.device.tomlconf import ConfigError
from sosbeacon.device.wire import AddressError, CommandError
from sosbeacon.relay.web import WebError
from sosbeacon.sim.drill import ScenarioError
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
    """The outbox package is the only part of the device that knows it is SQLite."""
    outbox = REPO / "device" / "outbox"
    naming = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "device").rglob("*.py"))
        if outbox not in p.parents and "sqlite3" in imported_modules(p)
    ]
    assert naming == []


def test_the_outbox_shows_its_api_and_no_connection() -> None:
    """What the rest of the device may use is ``device.outbox.__all__``; neither it nor
    the front class offers a database connection, and only tests use the probe."""
    import sosbeacon.device.outbox as pkg
    from sosbeacon.device.outbox import Outbox

    assert set(pkg.__all__) <= set(dir(pkg))
    assert {"Outbox", "Limits", "OutboxError", "SessionMark"} <= set(pkg.__all__)
    public = {n for n in dir(Outbox) if not n.startswith("_")}
    assert not public & {"db", "reader", "connection", "get_meta", "set_meta"}
    probing = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "device").rglob("*.py"))
        if p.name != "testing.py" and "device.outbox.testing" in imported_modules(p)
    ]
    assert probing == []
