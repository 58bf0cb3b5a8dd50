"""The devices' end-to-end keys (docs/security.md), when ``relay.keys_dir`` is set.

``<keys_dir>/<device id>.key`` is the device's current key (the same file as the
device's ``uplink.key_file``); ``<device id>.<anything>.key`` are keys kept from before
a rotation, until the device's backlog sealed under them has drained. Every file must be
readable by its owner only (``chmod 600``). Files are read again when the directory
changes (a key added or removed takes effect without a restart), and when a message
comes sealed under a key id the relay does not hold (a key file overwritten in place
leaves the directory's time as it was): at most once every :data:`RELOAD_EVERY`
seconds, so messages under forged key ids cannot make the relay read its keys over and
over.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from sosbeacon.device.tomlconf import LOOSE
from sosbeacon.device.wire import (
    KeyFileError,
    SealError,
    UnknownKeyError,
    read_key,
    seal,
    unseal,
)

log = logging.getLogger(__name__)

#: the keys are read again for a message under an unknown key id at most this often (s)
RELOAD_EVERY = 2.0
_DEVICE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class DeviceKeys:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: float | None = None
        self._keys: dict[str, list[bytes]] = {}
        #: per device, the key its last message opened under (what the relay seals with)
        self._using: dict[str, bytes] = {}
        #: when the keys were last read again for an unknown key id (time.monotonic)
        self._reread_at = -RELOAD_EVERY

    def _load(self) -> None:
        try:
            stamp = self.directory.stat().st_mtime
        except OSError as exc:
            raise SealError(f"the keys directory {self.directory}: {exc.strerror}") from None
        if stamp == self._stamp:
            return
        keys: dict[str, list[bytes]] = {}
        for p in sorted(self.directory.glob("*.key")):
            device, _, rest = p.name[: -len(".key")].partition(".")
            try:
                key = read_key(p)
            except KeyFileError as exc:
                log.error("relay: %s", exc)  # names the file, never the key
                continue
            keys.setdefault(device, [])
            # the current key first, then those kept from before a rotation
            keys[device].insert(0 if not rest else len(keys[device]), key)
        self._keys, self._stamp = keys, stamp

    def of(self, device: str) -> list[bytes]:
        if not _DEVICE.fullmatch(device):
            return []
        self._load()
        return self._keys.get(device, [])

    def open(self, device: str, payload: bytes) -> bytes:
        """The plaintext of a device's message; :class:`SealError` when it is in the
        clear, the device has no key here, or it does not open."""
        keys = self.of(device) or self._read_again(device)
        if not keys:
            raise self._no_key(device)
        try:
            plain, key = unseal(keys, payload)
        except UnknownKeyError:
            # perhaps a key file written over in place
            keys = self._read_again(device)
            if not keys:
                raise self._no_key(device) from None
            plain, key = unseal(keys, payload)
        self._using[device] = key
        return plain

    def _no_key(self, device: str) -> SealError:
        return SealError(f"no key for device {device[:64]!r} in {self.directory}")

    def _read_again(self, device: str) -> list[bytes]:
        """The keys read again whatever the directory's time says (a file overwritten in
        place), unless that was done less than :data:`RELOAD_EVERY` seconds ago."""
        now = time.monotonic()
        if now - self._reread_at >= RELOAD_EVERY:
            self._reread_at = now
            self._stamp = None
        return self.of(device)

    def seal(self, device: str, payload: bytes) -> bytes:
        """``payload`` for ``device``: under the key its messages last came with (its
        current key until one has)."""
        keys = self.of(device)
        if not keys:
            raise self._no_key(device)
        key = self._using.get(device)
        return seal(key if key in keys else keys[0], payload)


def check_dir(path: str) -> str | None:
    """What is wrong with a keys directory, or None."""
    p = Path(path)
    if not p.is_dir():
        return f"{path}: not a directory"
    if p.stat().st_mode & LOOSE:
        return f"{path}: others may read it, or its group change it: run chmod 700 {path}"
    if not os.access(p, os.R_OK | os.X_OK):
        return f"{path}: cannot be read by the relay"
    return None
