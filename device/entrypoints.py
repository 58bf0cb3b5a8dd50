"""The entry points of one group, read from the installed distributions'
``entry_points.txt`` files the way :func:`importlib.metadata.entry_points` finds them,
without importing it.

``sosd`` looks up its backends (:func:`device.parts.backends`) at every start.
``importlib.metadata`` brings ``zipfile``, ``csv``, ``importlib.resources`` and its own
parsers, about 1.2 MB of a daemon's resident memory for the life of the process, and
5-15 ms of start-up here (ten times that on a Pi Zero), to read a few lines of text.
This reads the same files: every directory on ``sys.path`` in order, each
``*.dist-info`` and ``*.egg-info`` in it, the first distribution of a name winning (as
``importlib.metadata`` deduplicates them), the section of the group in its
``entry_points.txt``. Where nothing declares the group (a distribution in a zip file,
an importer of another kind), :func:`declared` asks ``importlib.metadata`` after all.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

_DIST = (".dist-info", ".egg-info")


def _normalized(folder: str) -> str:
    """A distribution's name from its metadata folder (``Foo.Bar-1.0.dist-info``,
    ``foo_bar.egg-info``), normalized as packaging does."""
    stem = folder.rsplit(".", 1)[0].partition("-")[0]
    return re.sub(r"[-_.]+", "_", stem).lower()


def parse(text: str, group: str) -> dict[str, str]:
    """``name: "module:attr"`` of ``group``'s section of an ``entry_points.txt`` (an
    INI file; extras after the value, ``mod:attr [extra]``, are dropped)."""
    out: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            out.setdefault(name.strip(), value.split("[", 1)[0].strip())
    return out


def scan(group: str, path: list[str] | None = None) -> dict[str, str]:
    """The group's entry points, name -> ``module:attr``, of the distributions found on
    ``path`` (default ``sys.path``); the first distribution of a name wins, and among
    distributions the first to declare an entry point's name."""
    seen: set[str] = set()
    out: dict[str, str] = {}
    for entry in sys.path if path is None else path:
        root = entry or "."
        try:
            names = sorted(os.listdir(root))
        except OSError:  # not a directory (a zip file), or gone
            continue
        for folder in names:
            if not folder.endswith(_DIST):
                continue
            dist = _normalized(folder)
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(root, folder, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:  # no entry points, or not a folder
                continue
            for name, value in parse(text, group).items():
                out.setdefault(name, value)
    return out


def declared(group: str) -> dict[str, str]:
    """:func:`scan`; when it finds nothing, what ``importlib.metadata`` finds."""
    found = scan(group)
    if not found:
        from importlib.metadata import entry_points

        found = {ep.name: ep.value for ep in entry_points(group=group)}
    return found


def load(value: str) -> Any:
    """The object an entry point's ``module:attr.sub`` names."""
    module, _, attrs = value.partition(":")
    obj: Any = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj
