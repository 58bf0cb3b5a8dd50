"""The relay's store, asked directly: what a live page is pushed from memory after route
points were stored is what the database gives the page for the same points, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device.wire import Received
from sosbeacon.relay import db
from sosbeacon.relay.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    pg = request.getfixturevalue("pg")
    return str(pg.new_db("s" + uuid.uuid4().hex[:12]))


def fix(seq: int, t: float, lat: float, *, box: str = "box1", acc: Any = 5.0) -> Received:
    return Received(box, seq, "fix", t, {"fix": {"lat": lat, "lon": -3.17, "acc": acc}}, "s1")


async def test_a_live_update_from_memory_is_what_the_page_query_gives(db_url: str) -> None:
    store = Store(db.engine(db_url), link_key=b"k" * 32)
    await store.create()
    try:
        now = time.time()  # stored times are the records' own; nothing compares with a date
        start = Received(
            "box1", 1, "sos-start", now,
            {"trigger": "button", "contacts": [{"name": "A", "reach": "mailto:a@example.org"}]},
            "s1",
        )  # fmt: skip
        done = await store.ingest("dev1", [start], now=now)
        (sid,) = done.started
        assert done.live_update(sid) is None  # an SOS event: the page is asked of the database

        # points out of order, one seq missing (4), one arriving twice, an odd accuracy
        batch = [fix(3, now + 2, 55.2), fix(2, now + 1, 55.1), fix(5, now + 4, 55.4, acc=None)]
        done = await store.ingest_many([("dev1", batch[:2]), ("dev1", batch[1:])], now=now)
        light = done.live_update(sid)
        assert light is not None
        page = await store.page(sid, since_seq=1)
        assert light["points"] == page["points"] and len(light["points"]) == 3
        assert light["waiting"] == page["waiting"] == 1  # seq 4 is on its way

        done = await store.ingest("dev1", [fix(4, now + 3, 55.3)], now=now)
        light = done.live_update(sid)
        assert light is not None and light["waiting"] == 0
        whole = (await store.page(sid))["points"]
        assert light["points"] == [p for p in whole if p[0] == 4]
        assert [p[0] for p in whole] == [2, 3, 4, 5]  # in time order

        # anything but a fix along with them: the whole page, from the database
        bat = Received("box1", 6, "battery", now + 5, {"battery": {"pct": 80}}, "s1")
        done = await store.ingest("dev1", [fix(7, now + 6, 55.5), bat], now=now)
        assert done.live_update(sid) is None
        # a duplicate only: nothing new to push
        done = await store.ingest("dev1", [fix(7, now + 6, 55.5)], now=now)
        assert done.live_update(sid) is None and done.duplicates == 1
    finally:
        await store.close()
