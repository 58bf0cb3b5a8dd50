"""TOML files as typed, frozen dataclasses, with errors that name the key.

Every section maps onto a settings dataclass, field for field (the TOML key is the field
name). Validation collects *every* problem and reports them together, each naming its key
and what is expected; unknown keys are errors (a typo must not silently leave a default in
place). Both services use it: ``device.config`` (sosd) and ``relay.config`` (sos-relay).
"""

from __future__ import annotations

import enum
import fnmatch
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sosbeacon.device.errors import SosbeaconError


class ConfigError(SosbeaconError, ValueError):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the configuration:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def read(
    path: Path | str | None,
    text: str | None,
    overrides: Mapping[str, Any] | None,
    *,
    example: str,
) -> tuple[str, dict[str, Any]]:
    """The file's table (``overrides``, dotted keys like ``{"device.id": "b1"}``, applied
    on top) and its name for messages; ``example`` is the file to copy when it is missing."""
    source = str(path) if path is not None else "<text>"
    if text is None:
        if path is None:
            raise ValueError("read() needs a path or text")
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                source,
                [f"the file does not exist: copy {example} there and edit it, or pass --config"],
            ) from None
        except IsADirectoryError:
            raise ConfigError(source, ["it is a directory, not a TOML file"]) from None
        except OSError as exc:
            raise ConfigError(source, [f"cannot read it: {exc.strerror or exc}"]) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # never the bytes themselves: the file may hold a password
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(
                source,
                [
                    f"not UTF-8: byte {exc.start} (line {line}) is not valid UTF-8; save "
                    "the file as UTF-8"
                ],
            ) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = table
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return source, table


_BAD = object()


def build(
    cls: type, table: Any, errors: list[str], *, filled: Mapping[type, dict[str, Any]] = {}
) -> Any:
    """``cls`` built from ``table``, or ``None`` with the reasons added to ``errors``.
    ``filled`` gives, per class, fields that are not configured in its section."""
    return _build(cls, table, "", errors, filled)


def build_section(cls: type, table: Any, where: str, errors: list[str]) -> Any:
    """A section of its own (a backend's ``[sim]``): ``cls`` built from ``table``, its
    errors named ``where.key``; ``None`` if it has errors."""
    return _build(cls, table, where, errors, {})


def _build(
    cls: type, table: Any, where: str, errors: list[str], filled: Mapping[type, dict[str, Any]]
) -> Any:
    if not isinstance(table, dict):
        errors.append(f"{where or 'the file'}: expected a table ([section]), got {_show(table)}")
        return None
    hints = typing.get_type_hints(cls)
    given = filled.get(cls, {})
    known = {f.name: f for f in fields(cls) if f.init and f.name not in given}
    for key in table:
        if key not in known:
            errors.append(
                f"{_join(where, key)}: unknown key (known here: {', '.join(sorted(known))})"
            )
    kwargs: dict[str, Any] = dict(given)
    for name in known:
        if name not in table:
            f = known[name]
            if f.default is MISSING and f.default_factory is MISSING:
                errors.append(f"{_join(where, name)}: required")
            continue
        value = _coerce(hints[name], table[name], _join(where, name), errors, filled)
        if value is not _BAD:
            kwargs[name] = value
    before = len(errors)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if len(errors) == before:
            errors.append(f"{where or 'the file'}: {exc}")
        return None
    return obj


def _coerce(
    tp: Any, value: Any, key: str, errors: list[str], filled: Mapping[type, dict[str, Any]]
) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for opt in options:
            trial: list[str] = []
            got = _coerce(opt, value, key, trial, filled)
            if not trial:
                return got
        names = " or ".join(_name(o) for o in options)
        errors.append(f"{key}: expected {names}, got {_shown(key, value)}")
        return _BAD
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {_shown(key, value)}")
            return _BAD
        items = [_coerce(args[0], v, f"{key}[{i}]", errors, filled) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a table, got {_shown(key, value)}")
            return _BAD
        got_items = {
            k: _coerce(args[1], v, _join(key, k), errors, filled) for k, v in value.items()
        }
        return _BAD if any(v is _BAD for v in got_items.values()) else got_items
    if isinstance(tp, type) and is_dataclass(tp):
        built = _build(tp, value, key, errors, filled)
        return _BAD if built is None else built
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            names = ", ".join(map(repr, allowed))
            errors.append(f"{key}: expected one of {names}, got {_shown(key, value)}")
            return _BAD
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true or false, got {_shown(key, value)}")
            return _BAD
        return value
    if tp in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if tp is int and not isinstance(value, int):
            ok = False
        if not ok:
            errors.append(f"{key}: expected {_name(tp)}, got {_shown(key, value)}")
            return _BAD
        if not math.isfinite(value):
            errors.append(f"{key}: expected a finite number, got {value}")
            return _BAD
        if value < 0:
            errors.append(f"{key}: must not be negative, got {value}")
            return _BAD
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {_shown(key, value)}")
            return _BAD
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            errors.append(f"{key}: expected a path, got {_shown(key, value)}")
            return _BAD
        return Path(value)
    raise TypeError(f"config: no rule for {tp!r} at {key}")  # a bug in the schema


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _name(tp: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


#: keys whose values are never shown (in errors, check-config, logs)
SECRET_KEYS = ("password",)


def _shown(key: str, value: Any) -> str:
    if key.rsplit(".", 1)[-1] in SECRET_KEYS:
        return f"{type(value).__name__} (hidden)"
    return _show(value)


def redact_url(url: str) -> str:
    """``mqtt://user:secret@host`` as ``mqtt://user:***@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _show(value: Any) -> str:
    kind = {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind


def _numbers(obj: Any, where: str = "") -> list[tuple[str, float]]:
    """Every number in the configuration, by dotted key."""
    out: list[tuple[str, float]] = []
    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            out += _numbers(getattr(obj, f.name), _join(where, f.name))
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out.append((where, obj))
    return out


def out_of_range(obj: Any, ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """Every number in ``obj`` outside its range: ``ranges`` maps fnmatch patterns of
    dotted keys to inclusive ranges, the first match wins; unnamed keys: 0 to 1e9."""
    errors = []
    for key, value in _numbers(obj):
        lo, hi = range_in(ranges, key)
        if not lo <= value <= hi:
            errors.append(f"{key}: must be from {lo:g} to {hi:g}, got {value:g}")
    return errors


def range_in(ranges: Mapping[str, tuple[float, float]], key: str) -> tuple[float, float]:
    return next((r for pat, r in ranges.items() if fnmatch.fnmatchcase(key, pat)), (0, 1e9))


def is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name too long, a NUL in it
        return False


def secret_file(key: str, path: str) -> str | None:
    """What is wrong with a file holding a secret (a password, a PIN, a key), as an
    error for ``key``; None when it is a readable file only its owner may read."""
    shown = path[:200]
    if not (is_file(path) and os.access(path, os.R_OK)):
        return f"{key}: {shown} cannot be read (or is not a file)"
    loose = too_open(shown, Path(path).stat().st_mode)
    return f"{key}: {loose}" if loose else None


#: permission bits a file holding a secret must not have: any for others, group write
LOOSE = 0o027


def too_open(path: str, mode: int) -> str | None:
    """What is wrong with a secret file's ``mode``, with the ``chmod`` to run; None when
    only its owner (and its group, reading) may use it."""
    if not mode & LOOSE:
        return None
    return (
        f"{path} may be read or changed by others (mode {mode & 0o777:o}); it holds a "
        f"secret: run chmod 600 {path} (or 640, owned by root and the daemon's group)"
    )


def host_port(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:2947`` for IPv6), the port from 1 to 65535."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (MQTT: no wildcards, no NUL, at most
    65535 bytes), or ``None``."""
    if any(c in topic for c in "+#\0"):
        return f"{topic!r} is not a topic one can publish to: no '+', '#' or NUL"
    if len(topic.encode()) > 65535:
        return "a topic is at most 65535 bytes"
    return None
