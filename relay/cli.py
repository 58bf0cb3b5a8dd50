"""``sos-relay``: the contacts' relay.

sos-relay run [--config FILE]
sos-relay check-config [--config FILE]
sos-relay links list [--config FILE]
sos-relay links revoke ID [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy.exc

from sosbeacon.device.private import private_db, private_dir
from sosbeacon.device.tomlconf import ConfigError, redact_url
from sosbeacon.relay import config as config_mod
from sosbeacon.relay import db, links
from sosbeacon.relay.config import DEFAULT_CONFIG, RelayConfig
from sosbeacon.relay.store import Store
from sosbeacon.relay.web import WebError


def _load(path: Path | None) -> RelayConfig:
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        return config_mod.load(text="")
    return config_mod.load(path)


def open_store(cfg: RelayConfig) -> Store:
    """The store, with the data directory 0700 and what it holds 0600 (the SQLite
    database, its WAL, the link key). :class:`ConfigError` says what cannot be used."""
    data = cfg.relay.data_dir
    try:
        private_dir(data, mode=0o700)
        if not cfg.database.url:
            private_db(data / "relay.db")
        key = links.load_key(cfg.link_key_path())
    except OSError as exc:
        problem = (
            f"relay.data_dir: {exc.filename or data}: {exc.strerror or exc} (the relay's "
            "user must own the directory: chown it, or set relay.data_dir)"
        )
        raise ConfigError(str(cfg.source), [problem]) from None
    except ValueError as exc:
        raise ConfigError(str(cfg.source), [str(exc)]) from None
    return Store(db.engine(cfg.database_url()), link_key=key, backlog_hold=cfg.notify.backlog_hold)


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


async def _links(cfg: RelayConfig, action: str, link_id: int | None) -> int:
    store = open_store(cfg)
    try:
        await store.create()
        if action == "revoke":
            assert link_id is not None
            if await store.revoke(link_id, now=time.time()):
                sys.stdout.write(f"link {link_id} revoked: it now answers 410 Gone\n")
                return 0
            sys.stderr.write(f"no link {link_id} that works (see: sos-relay links list)\n")
            return 1
        rows = await store.list_links()
        if not rows:
            sys.stdout.write("no links\n")
        for r in rows:
            state = "revoked" if r["revoked"] else ("ended" if r["ended"] else "active")
            sys.stdout.write(
                f"{r['id']:>5}  {r['device']}  session {r['sess']}{' DRILL' if r['drill'] else ''}"
                f"  {r['name']}  {state}  opened {r['opens']}x (first {_when(r['first_opened'])})"
                f"  expires {_when(r['expires'])}\n"
            )
        return 0
    finally:
        await store.close()


async def _run(cfg: RelayConfig) -> None:
    from sosbeacon.relay.service import Relay

    store = open_store(cfg)
    relay = Relay(cfg, store)
    try:
        await relay.run()
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sos-relay", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the relay")
    sub.add_parser("check-config", help="validate the configuration and print it (no secrets)")
    lk = sub.add_parser("links", help="the contacts' links")
    lsub = lk.add_subparsers(dest="action", required=True)
    lsub.add_parser("list", help="every link, with who opened it")
    rv = lsub.add_parser("revoke", help="withdraw a link now (it answers 410 Gone)")
    rv.add_argument("id", type=int)
    args = p.parse_args(argv)
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if args.command == "check-config":
        out: dict[str, Any] = config_mod.public(cfg)
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        sys.stdout.write(f"{cfg.source}: valid\n")
        if not cfg.notify.services:
            sys.stdout.write(
                "WARNING: no notify.services: nobody is told of an SOS (the links still "
                "work, and sos-relay links list shows them)\n"
            )
        return 0
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        if args.command == "links":
            return asyncio.run(_links(cfg, args.action, getattr(args, "id", None)))
        return _serve(cfg)
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:
        sys.stderr.write(f"sos-relay: {exc}\n")
        return 2


def _serve(cfg: RelayConfig) -> int:
    """Run until stopped; a port taken or a database out of reach is said plainly."""
    said: list[str] = []
    try:
        asyncio.run(_run(cfg))
    except* (ConfigError, WebError) as group:
        said += [f"sos-relay: {exc}" for exc in group.exceptions]
    except* (sqlalchemy.exc.SQLAlchemyError, OSError) as group:
        said += [
            f"sos-relay: the database at {redact_url(cfg.database_url())} cannot be used: "
            f"{str(exc).splitlines()[0][:300]}\n"
            "  (check database.url, that the server is up and the user may create tables)"
            for exc in group.exceptions
        ]
    for line in said:
        sys.stderr.write(line + "\n")
    return 1 if said else 0


if __name__ == "__main__":
    raise SystemExit(main())
