"""Versioned documents: one reader for every JSON file edgetl writes, typed checks of their keys, one timestamp.

Bundle manifests, engine sidecars, timings and run descriptions are all read the same way: parsed, their
version field checked, then every key checked against its declared type, so a damaged, foreign or hand-edited
file ends in one line naming the file and the key (an error of the caller's class) instead of a TypeError far
from it.  Device profiles (TOML) use the same checks.  The checks are our own: the device installs numpy,
Pillow, onnxruntime and click only, and this module needs none of them.

A table is declared as key -> type, with the types ``str``, ``int``, ``float`` (an integer passes as a number),
``bool`` (never an integer, and no integer is a bool), ``list[T]`` or ``tuple[T, ...]`` (a string is not a
list), ``T | None`` (null allowed), ``dict`` (any table), ``dict[str, T]`` (any keys, values T), a nested :class:`Table`
or a dataclass (its fields, those with a default optional).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .errors import EdgetlError

T = TypeVar("T")
#: Where a value sits in its document: table keys and list positions, outermost first.
KeyPath = tuple[str | int, ...]


def utc_now() -> str:
    """Now in UTC to the second, ISO 8601 (``2026-11-27T02:51:09+00:00``): the stamp of every file edgetl writes."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def to_json(document: Any) -> str:
    """A document's text as edgetl writes every one: a dataclass as its fields, indented by two."""
    return json.dumps(dataclasses.asdict(document) if dataclasses.is_dataclass(document) else document, indent=2)


@dataclasses.dataclass(frozen=True)
class Origin:
    """Who reads a document, for its errors: how to name the file, which error class, and what to do about it."""

    name: str
    error: type[EdgetlError]
    hint: str = ""

    def fail(self, problem: str) -> NoReturn:
        raise self.error(f"{self.name}: {problem}" + (f"; {self.hint}" if self.hint else ""))


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """The keys a table (JSON object, TOML table) may hold and their types.

    ``optional`` keys may be absent; a ``closed`` table refuses keys it does not declare (a typo is caught where
    it is made); ``or_empty`` lets ``{}`` stand for "none" (a block an older writer left empty).
    """

    keys: Mapping[str, Any]
    optional: Collection[str] = ()
    closed: bool = True
    or_empty: bool = False


def table_of(cls: type, *, closed: bool = True, **keys: Any) -> Table:
    """The table a dataclass is read from: its fields and their annotated types, those with a default optional;
    ``keys`` declare in more detail some fields annotated loosely (a ``dict`` field's own keys)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    unknown = set(keys) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    hints = _hints(cls)
    return Table({f.name: keys.get(f.name, hints[f.name]) for f in fields},
                 optional=frozenset(f.name for f in fields
                                    if f.default is not dataclasses.MISSING
                                    or f.default_factory is not dataclasses.MISSING),
                 closed=closed)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _table_of_dataclass(cls: type) -> Table:
    return table_of(cls)


def read_document(path: str | Path, origin: Origin, versions: Sequence[str | int], *, what: str,
                  key: str = "schema", missing: str = "") -> dict:
    """The JSON object in ``path``, whose version field ``key`` is one of ``versions``.

    ``what`` names the kind of document for a foreign one ("an edgetl engine sidecar"); ``missing`` is the whole
    message for a file that does not exist, where the caller knows better than "no such file".
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing:
            raise origin.error(missing) from None
        origin.fail("no such file")
    except UnicodeDecodeError:
        origin.fail("not valid JSON (not UTF-8 text)")
    except OSError as exc:
        origin.fail(f"cannot be read ({exc.strerror or exc})")
    return parse_document(text, origin, versions, what=what, key=key)


def parse_document(text: str, origin: Origin, versions: Sequence[str | int], *, what: str,
                   key: str = "schema") -> dict:
    """The JSON object in ``text`` (read by the caller), whose version field ``key`` is one of ``versions``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        origin.fail(f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        origin.fail(f"not {what} (it holds {_got(data)}, not a table)")
    version = data.get(key)
    if not any(type(version) is type(v) and version == v for v in versions):
        label = key.replace("_", " ")
        found = f"has {label} {_short(json.dumps(version))}" if key in data else f"has no {label}"
        readable = " or ".join(json.dumps(v) for v in versions)
        origin.fail(f"{found}: not {what} this edgetl reads ({label} {readable}; a newer edgetl may read it)")
    return data


def check(value: Any, spec: Any, origin: Origin, at: KeyPath = ()) -> None:
    """Raise ``origin``'s error naming the key where ``value`` (found at ``at``) does not match ``spec``."""
    if spec in _PLAIN:            # the common case first: reading a manifest is on every command's cold start
        if not _is(value, spec):
            _wrong(value, spec, origin, at)
        return
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        spec = _table_of_dataclass(spec)
    if isinstance(spec, Table):
        _check_table(value, spec, origin, at)
        return
    form = typing.get_origin(spec)
    if form in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(spec):
            return
        spec = next(arg for arg in typing.get_args(spec) if arg is not type(None))   # T | None: one T
        check(value, spec, origin, at)
    elif form in (list, tuple):
        if not isinstance(value, list):
            _wrong(value, spec, origin, at)
        item = typing.get_args(spec)[0]
        for index, element in enumerate(value):
            check(element, item, origin, at + (index,))
    elif form is dict:            # dict[str, T]: a table of any keys whose values are all T
        if not isinstance(value, dict):
            _wrong(value, spec, origin, at)
        item = typing.get_args(spec)[1]
        for key, element in value.items():
            check(element, item, origin, at + (str(key),))
    else:
        raise TypeError(f"no check for the type {spec!r}")      # a declaration this module cannot read


def build(cls: type[T], data: Any, origin: Origin, spec: Table | None = None) -> T:
    """A ``cls`` from ``data`` checked against ``spec`` (default: the dataclass's own fields).

    Nested dataclasses are built too, lists become tuples where the field is a tuple and integers floats where
    it is a float; keys an open table allows but ``cls`` has no field for are left out.
    """
    check(data, spec or _table_of_dataclass(cls), origin)
    return _construct(cls, data)


def _check_table(value: Any, table: Table, origin: Origin, at: KeyPath) -> None:
    if not isinstance(value, dict):
        _wrong(value, table, origin, at)
    if table.or_empty and not value:
        return
    if table.closed:
        unknown = sorted(set(value) - set(table.keys))
        if unknown:
            origin.fail(f"{_table_name(at)}unknown key(s) {', '.join(map(str, unknown))} "
                        f"(valid: {', '.join(table.keys)})")
    for key, spec in table.keys.items():
        if key in value:
            check(value[key], spec, origin, at + (key,))
        elif key not in table.optional:
            origin.fail(f"missing key {_key_name(at + (key,))}")


def _construct(cls: type[T], data: dict) -> T:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{key: _convert(hints[key], value) for key, value in data.items() if key in names})


def _convert(hint: Any, value: Any) -> Any:
    if value is None or hint in _PLAIN and hint is not float:
        return value
    form = typing.get_origin(hint)
    if form in (typing.Union, types.UnionType):
        return _convert(next(arg for arg in typing.get_args(hint) if arg is not type(None)), value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _construct(hint, value)
    if form in (list, tuple):
        items = [_convert(typing.get_args(hint)[0], v) for v in value]
        return tuple(items) if form is tuple else items
    return float(value) if hint is float else value


#: Types checked by isinstance alone (compared with ``in`` on a tuple: a :class:`Table` is not hashable).
_PLAIN = (str, int, float, bool, dict)


def _is(value: Any, spec: type) -> bool:
    if isinstance(value, bool):
        return spec is bool
    if spec is float:
        return isinstance(value, (int, float))
    return isinstance(value, spec)


def _wrong(value: Any, spec: Any, origin: Origin, at: KeyPath) -> NoReturn:
    origin.fail(f"{_key_name(at)} must be {_expected(spec)}, got {_got(value)}")


def _key_name(at: KeyPath) -> str:
    """``("deploy", "backends", 1)`` -> ``[deploy] backends[1]``: the table as TOML writes it, then the key."""
    last = max((i for i, part in enumerate(at) if isinstance(part, str)), default=None)
    if last is None:
        return "the document"
    return _table_name(at[:last]) + at[last] + "".join(f"[{i}]" for i in at[last + 1:])


def _table_name(at: KeyPath) -> str:
    if not at:
        return ""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in at).lstrip(".")
    return f"[{text}] "


_SCALARS = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
            bool: ("true or false", "booleans")}


def _expected(spec: Any, plural: bool = False) -> str:
    if typing.get_origin(spec) in (list, tuple):
        return "lists" if plural else f"a list of {_expected(typing.get_args(spec)[0], plural=True)}"
    if isinstance(spec, type) and spec in _SCALARS:
        return _SCALARS[spec][plural]
    return "tables" if plural else "a table"


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {_short(json.dumps(value))}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"      # a TOML date or time


def _short(text: str, limit: int = 42) -> str:
    """At most ``limit`` characters of a value quoted in a message, which stays one short line."""
    return text if len(text) <= limit else text[:limit - 4] + '..."'


__all__ = ["Origin", "Table", "build", "check", "parse_document", "read_document", "table_of", "to_json", "utc_now"]
