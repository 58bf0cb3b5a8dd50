"""The ``sos-relay`` command: the relay's CLI, or, when the relay's own dependencies
are not installed (a device installs sosbeacon without them), one line that says how
to get them instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever third-party module is missing here, it is the relay extra's (pyproject.toml
    # lists them): no second copy of that list to keep in step.
    try:
        from sosbeacon.relay.cli import main as relay_main
    except ModuleNotFoundError as exc:
        if (exc.name or "sosbeacon").split(".")[0] == "sosbeacon":
            raise  # one of ours is missing: a broken install, said as it is
        sys.stderr.write(
            f"sos-relay: the relay's dependencies are not installed ({exc.name} is missing): "
            "pip install 'sosbeacon[relay]' (the device itself does not need them)\n"
        )
        return 2
    return relay_main(argv)
