"""The ``sos-relay`` command: the relay's CLI, or, when the relay's own dependencies
are not installed (a device installs sosbeacon without them), one line that says how
to get them instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: the top-level modules of the ``relay`` extra (pyproject.toml)
RELAY_DEPS = {"sqlalchemy", "aiosqlite", "asyncpg", "apprise", "starlette", "uvicorn"}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from sosbeacon.relay.cli import main as relay_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in RELAY_DEPS:
            raise
        sys.stderr.write(
            f"sos-relay: the relay's dependencies are not installed ({exc.name} is missing): "
            "pip install 'sosbeacon[relay]' (the device itself does not need them)\n"
        )
        return 2
    return relay_main(argv)
