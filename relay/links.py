"""Capability links: the secret in a contact's URL, and what the database keeps of it.

A link's token is 192 bits: HMAC-SHA256 of a random 16-byte salt (from :mod:`secrets`)
under the relay's link key, cut to 24 bytes and written URL-safe (32 characters). The
database keeps the salt and SHA-256 of the token, never the token: someone who reads the
database cannot open a page, but the relay (which holds the key, in a file outside the
database) can make the same token again to retry a notification after a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from sosbeacon.device.tomlconf import too_open

TOKEN_BYTES = 24
KEY_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def token(key: bytes, salt: bytes) -> str:
    mac = hmac.new(key, b"sosbeacon-link:" + salt, hashlib.sha256).digest()[:TOKEN_BYTES]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_hash(tok: str) -> bytes:
    return hashlib.sha256(tok.encode()).digest()


def well_formed(tok: str) -> bool:
    """The shape of a token (a forged or truncated one is refused before any lookup)."""
    return bool(_TOKEN.fullmatch(tok))


def load_key(path: Path) -> bytes:
    """The relay's link key, made on first use (0600). Relays that share a database
    must share this file too."""
    try:
        loose = too_open(str(path), path.stat().st_mode)
        if loose:
            raise ValueError(loose)
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another relay made it first
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: the link key is {len(key)} bytes, expected {KEY_BYTES}")
    return key
