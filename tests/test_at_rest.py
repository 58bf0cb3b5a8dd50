"""What the device keeps at rest: its files readable by its owner only, and a deleted
route gone from the disk, not just from the b-tree (``secure_delete``, the WAL cut
back): the raw database and WAL files are scanned for a deleted coordinate."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sosbeacon.device.outbox import Outbox
from sosbeacon.device.private import private_dir
from sosbeacon.device.records import Priority, Record, RecordKind

LAT, LON = 12.3456789, 98.7654321


def secret_fix(i: int, session: str) -> Record:
    t = datetime.now(UTC) + timedelta(seconds=i)
    fix = {"t": t.isoformat(), "lat": LAT + i * 1e-6, "lon": LON, "acc": 4.0}
    return Record(RecordKind.FIX, t, {"fix": fix}, Priority.LIVE, session)


def traces(directory: Path) -> list[str]:
    """Which files of the outbox still hold the coordinate, as text or as the
    micro-degrees a track row keeps."""
    needles = [f"{LAT:.5f}"[:7].encode(), int(LAT * 1e6).to_bytes(4, "big"),
               int(LON * 1e6).to_bytes(4, "big"), b"98.7654"]  # fmt: skip
    found = []
    for p in sorted(directory.glob("outbox.db*")):
        data = p.read_bytes()
        found += [f"{p.name}:{n!r}" for n in needles if n in data]
    return found


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def test_the_store_overwrites_what_it_deletes(tmp_path: Path) -> None:
    """``secure_delete`` on the outbox's connections (Debian's SQLite has it on by
    default; the outbox does not rely on that)."""
    from sosbeacon.device.outbox.testing import Probe

    async with await Outbox.open(tmp_path / "outbox.db") as box:
        assert (await Probe(box).sql("PRAGMA secure_delete"))[0][0] == 1


async def test_the_outbox_and_its_wal_are_the_owner_s_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    private_dir(data)
    assert mode(data) == 0o710  # the group may reach the control socket, nothing else
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    private_dir(loose)
    assert mode(loose) == 0o710
    async with await Outbox.open(data / "outbox.db") as box:
        await box.add(secret_fix(0, "s1"))
        files = sorted(data.glob("outbox.db*"))
        assert {p.name for p in files} >= {"outbox.db", "outbox.db-wal"}
        assert all(mode(p) == 0o600 for p in files), [(p.name, oct(mode(p))) for p in files]


async def test_an_expired_route_and_a_purge_leave_no_trace_on_the_disk(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "outbox.db") as box:
        for i in range(400):
            await box.add(secret_fix(i, "s1"))
        assert traces(tmp_path)  # the scan finds what is there
        await box.expire_session("s1", datetime.now(UTC) - timedelta(seconds=1))
        assert await box.purge(datetime.now(UTC)) == 400
        assert traces(tmp_path) == []
        for i in range(400):
            await box.add(secret_fix(i, "s2"))
        assert traces(tmp_path)
        assert await box.wipe() >= 400  # and the gap notice of the first 400
        assert traces(tmp_path) == []
    assert traces(tmp_path) == []  # and after closing


def test_an_export_is_the_owner_s_alone(tmp_path: Path) -> None:
    from sosbeacon.device.cli import write_export

    fix = {"t": "2026-11-22T10:00:00Z", "lat": LAT, "lon": LON}
    answer = {"device": "b1", "records": [{"kind": "fix", "session": "s1", "drill": False,
                                           "data": {"fix": fix}}]}  # fmt: skip
    write_export(answer, tmp_path / "out")
    files = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in files] == ["b1-export.json", "b1-routes.gpx"]
    assert all(mode(p) == 0o600 for p in files)


def test_the_relay_s_data_is_its_own_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The relay's directory 0700; its SQLite store, the store's WAL (tightened when an
    earlier run left it open) and the link key 0600; a link key others may read is
    refused with the chmod to run, before anything is served."""
    import asyncio
    import os

    from sosbeacon.relay import config as relay_config
    from sosbeacon.relay.cli import main, open_store

    data = tmp_path / "relay"
    data.mkdir(mode=0o755)
    (data / "relay.db-wal").touch(mode=0o644)  # as an older release left it
    conf = tmp_path / "relay.toml"
    conf.write_text(f'[relay]\ndata_dir = "{data}"\n')
    cfg = relay_config.load(conf)

    async def create() -> None:
        store = open_store(cfg)
        await store.create()
        await store.close()

    asyncio.run(create())
    assert mode(data) == 0o700
    files = sorted(data.iterdir())
    assert {p.name for p in files} >= {"relay.db", "link.key"}
    assert all(mode(p) == 0o600 for p in files), [(p.name, oct(mode(p))) for p in files]

    os.chmod(data / "link.key", 0o644)
    assert main(["--config", str(conf), "links", "list"]) == 2
    err = capsys.readouterr().err
    assert f"run chmod 600 {data / 'link.key'}" in err and "Traceback" not in err
    os.chmod(data / "link.key", 0o600)
    assert main(["--config", str(conf), "links", "list"]) == 0
