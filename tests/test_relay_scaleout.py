"""Several relays, one truth: relays sharing one PostgreSQL database and one MQTT v5
shared subscription. A page served by one relay shows what another stored (PostgreSQL
``LISTEN``/``NOTIFY``); a relay killed with ``kill -9`` in the middle of a backlog and an
SOS loses nothing, sends no contact a second notification, and the page its survivor
serves keeps updating."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from sosbeacon.relay.store import CHANNEL
from sosbeacon.sim.broker import free_port
from sosbeacon.sim.contact_page import PageVisitor
from tests.helpers import eventually
from tests.mqtt_env import fix_record, rig
from tests.relay_env import relay_rig, relay_settings
from tests.test_relay import sos_start


async def page_points(visitor: PageVisitor, seen: set[int], opened: asyncio.Event) -> None:
    """Every route point the page's live stream shows, by seq."""
    async for kind, data in visitor.events():
        if kind == "page":
            opened.set()
        seen.update(int(p[0]) for p in data.get("points") or ())


async def test_a_page_on_one_relay_shows_what_another_stored(
    tmp_path: Path, pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Relay B serves the page and is not connected to the broker at all: every update
    its viewer gets was stored by relay A and announced through PostgreSQL. A malformed
    announcement on the channel is logged and changes nothing."""
    url = pg.new_db(f"t{uuid.uuid4().hex[:12]}")
    key = {"relay.link_key_file": str(tmp_path / "link.key")}
    sess = uuid.uuid4().hex[:16]
    async with rig(tmp_path) as dev:
        a_cfg = relay_settings(tmp_path / "a", dev.broker.port, db_url=url, **key)
        b_cfg = relay_settings(tmp_path / "b", free_port(), db_url=url, **key)  # no broker
        async with relay_rig(a_cfg) as a:
            await dev.outbox.add(sos_start(sess))
            links = await eventually(a.links)
            # B: its web page only (its broker is nowhere), so it stores nothing itself
            async with relay_rig(b_cfg, wait_for_broker=False) as b:
                assert not b.relay.connected.is_set()
                link = links[0].replace(a.base, b.base)
                visitor = PageVisitor(link)
                seen: set[int] = set()
                opened = asyncio.Event()
                task = asyncio.create_task(page_points(visitor, seen, opened))
                try:
                    await asyncio.wait_for(opened.wait(), 10)
                    async with b.store.engine.begin() as conn:  # not ours: said, not fatal
                        await conn.execute(select(func.pg_notify(CHANNEL, "{garbage")))
                    seqs = [
                        (await dev.outbox.store(fix_record(i, session=sess))).seq for i in range(5)
                    ]
                    await eventually(lambda: set(seqs) <= seen, within=15)
                    assert b.relay.counters.records == 0 and a.relay.counters.records >= 6
                    assert "a malformed announcement on sosbeacon_pages" in caplog.text
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await visitor.close()


CONTACTS = [
    {"name": "Alice", "reach": "alice@example.org"},
    {"name": "Bob", "reach": "bob@example.org"},
]
#: route points stored while the device had no data: the backlog the relays drain
BACKLOG = 4000


async def test_a_relay_killed_mid_backlog_loses_nothing_and_alerts_nobody_twice(
    tmp_path: Path, pg: Any
) -> None:
    """Two ``sos-relay`` processes, one PostgreSQL, one shared subscription. An SOS's
    backlog of route points drains into both; relay A is killed with SIGKILL in the
    middle of it. Relay B goes on storing its share, the page it serves keeps updating
    (live points after the kill included), and once A is back (as systemd restarts it)
    the ledger is complete; each contact got one alert and one end notice."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from sosbeacon.device.uplink import UplinkConfig
    from sosbeacon.relay import db, links
    from sosbeacon.relay.store import Store
    from sosbeacon.sim.mailsink import MailSink
    from sosbeacon.sim.relay_process import RelayProcess, relay_values
    from tests.test_relay import sos_end

    url = pg.new_db(f"t{uuid.uuid4().hex[:12]}")
    sess = uuid.uuid4().hex[:16]
    up = UplinkConfig(device_id="dev1", batch_count=1, max_batch=10, backoff_max=2.0)
    with MailSink() as mail:
        async with rig(tmp_path, config=up, start=False) as dev:
            broker = f"mqtt://127.0.0.1:{dev.broker.port}"
            a = RelayProcess(tmp_path / "a", relay_values(tmp_path, "a", broker, url, mail.url()))
            b = RelayProcess(tmp_path / "b", relay_values(tmp_path, "b", broker, url, mail.url()))
            await asyncio.gather(a.start(), b.start())
            eng = create_async_engine(url)
            store = Store(eng, link_key=links.load_key(tmp_path / "link.key"))
            visitor: PageVisitor | None = None
            watching: asyncio.Task[None] | None = None
            try:

                async def stored() -> int:
                    async with eng.connect() as conn:
                        q = select(func.count()).select_from(db.records)
                        return int((await conn.execute(q)).scalar_one())

                # the SOS, and a backlog of its route, stored while the device was offline
                await dev.outbox.add(sos_start(sess, contacts=CONTACTS))
                for first in range(0, BACKLOG, 500):
                    await asyncio.gather(*(dev.outbox.store(fix_record(i, session=sess))
                                           for i in range(first, first + 500)))  # fmt: skip
                dev.start_uplink()
                # the page of Alice's link, served by B, watched from the start
                salt = await eventually(lambda: salt_of(eng), within=20)
                visitor = PageVisitor(f"{b.base}/s/{store.link_token(salt)}")
                seen: set[int] = set()
                opened = asyncio.Event()
                watching = asyncio.create_task(page_points(visitor, seen, opened))
                await asyncio.wait_for(opened.wait(), 10)
                # kill -9 A in the middle of the backlog
                await eventually(lambda: _at_least(stored, BACKLOG // 5), within=60, step=0.01)
                await a.kill()
                at_kill = await stored()
                assert at_kill < BACKLOG, "the backlog had drained before the kill"
                # B goes on: its share is stored, and live points reach the page it serves
                await eventually(lambda: _at_least(stored, at_kill + 200), within=30)
                live = [(await dev.outbox.store(fix_record(BACKLOG + i, session=sess))).seq
                        for i in range(20)]  # fmt: skip
                await eventually(lambda: bool(seen & set(live)), within=20)
                # A comes back (systemd's Restart=): what the broker kept for it arrives
                await a.start()
                await dev.outbox.add(sos_end(sess, ended=datetime.now(UTC)))
                last = live[-1] + 1
                try:
                    await eventually(lambda: complete(eng, last), within=60)
                except TimeoutError:
                    raise AssertionError(f"records missing: {await ledger_of(eng)}") from None
                # every point is on the page B serves, those A stored included
                await eventually(lambda: set(range(2, last)) <= seen, within=20)
                try:
                    ends = await eventually(lambda: len(mail.mails) >= 4 and mail.mails, within=30)
                except TimeoutError:
                    sent = [(m.to, m.subject) for m in mail.mails]
                    tails = [p.log.read_text()[-2000:] for p in (a, b)]
                    raise AssertionError(f"mails: {sent}; relays' logs: {tails}") from None
                await asyncio.sleep(2.0)  # a second notification would come now
                by_whom: dict[str, list[str]] = {}
                for m in mail.mails:
                    by_whom.setdefault(m.to[0], []).append(m.subject)
                assert sorted(by_whom) == ["alice@example.org", "bob@example.org"], ends
                for subjects in by_whom.values():
                    assert len(subjects) == 2 and len(set(subjects)) == 2, by_whom
            finally:
                if watching is not None:
                    watching.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watching
                if visitor is not None:
                    await visitor.close()
                await asyncio.gather(a.stop(), b.stop())
                await eng.dispose()


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def salt_of(eng: Any) -> bytes | None:
    """The salt of the first contact's link, once the relays made it."""
    from sosbeacon.relay import db

    async with eng.connect() as conn:
        q = select(db.links.c.salt).where(db.links.c.contact == 0)
        return (await conn.execute(q)).scalar()


async def ledger_of(eng: Any) -> list[list[int]]:
    """The relays' ledger of the one outbox: the seq ranges stored."""
    from sosbeacon.relay import db

    async with eng.connect() as conn:
        return list((await conn.execute(select(db.boxes.c.seen))).scalar() or [])


async def complete(eng: Any, last: int) -> bool:
    """Every seq from 1 to ``last`` stored, none missing."""
    return await ledger_of(eng) == [[1, last]]
