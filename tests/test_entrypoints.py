"""device/entrypoints.py finds what importlib.metadata finds, without importing it."""

from __future__ import annotations

import os.path
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sosbeacon.device import entrypoints
from sosbeacon.device.parts import GROUP, BackendInfo, backends


@pytest.mark.parametrize("group", [GROUP, "console_scripts", "pytest11"])
def test_the_installed_entry_points_are_those_importlib_metadata_finds(group: str) -> None:
    ours = entrypoints.scan(group)
    theirs = {ep.name: ep.value for ep in entry_points(group=group)}
    assert ours == theirs
    assert ours  # each group has entry points installed here (sosd's own, pytest's)


def _dist(root: Path, folder: str, text: str | None) -> None:
    (root / folder).mkdir(parents=True)
    if text is not None:
        (root / folder / "entry_points.txt").write_text(text)


def test_path_order_names_and_sections_as_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _dist(a, "Foo_Bar-1.0.dist-info", "# a comment\n[g]\nx = pkg.mod:obj\n\n[h]\nz = q:r\n")
    # the same distribution further down the path: not seen (the first one wins)
    _dist(b, "foo.bar-2.0.dist-info", "[g]\nx = other:obj\nw = other:w\n")
    _dist(b, "other.egg-info", "[g]\ny=c:d\n")
    _dist(b, "empty-1.0.dist-info", None)  # no entry points at all
    (b / "junk-1.0.dist-info.txt").write_text("[g]\nj = not:this\n")
    (b / "file-1.0.dist-info").write_text("not a folder")
    path = [str(a), str(tmp_path / "missing"), str(tmp_path / "x.zip"), str(b)]
    want = {"x": "pkg.mod:obj", "y": "c:d"}
    assert entrypoints.scan("g", path) == want
    monkeypatch.setattr(sys, "path", path)
    assert {ep.name: ep.value for ep in entry_points(group="g")} == want
    assert entrypoints.scan("h", path) == {"z": "q:r"}


def test_extras_after_the_value_and_ini_comments_are_dropped() -> None:
    text = "[g]\n; an INI comment\nx = pkg.mod:obj [extra1, extra2]\n  # indented\n"
    assert entrypoints.parse(text, "g") == {"x": "pkg.mod:obj"}


def test_load_follows_module_and_attributes() -> None:
    assert entrypoints.load("os.path:join") is os.path.join
    assert entrypoints.load("sosbeacon.device.parts:BackendInfo.load") is BackendInfo.load
    assert entrypoints.load("os.path") is os.path


def test_nothing_found_asks_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entrypoints, "scan", lambda group: {})
    got = entrypoints.declared("console_scripts")
    assert got == {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert "sosd" in got


def test_the_backends_are_ours() -> None:
    found = backends()
    assert sorted(found) == ["hw", "sim"]
    assert all(isinstance(info, BackendInfo) for info in found.values())
