"""Typed reads out of one untrusted table (a config file's TOML, a policy's JSON).

:class:`Fields` wraps one mapping and hands out values of the asked type,
remembering which keys were read; :meth:`Fields.done` then names every key that
was present but never read, with the closest known key ("did you mean ..."),
either collecting those names for a warning (``unknown="collect"``, the config
files: upstream ignores unknown keys, we say so loudly) or refusing them
(``unknown="error"``, security policies). Every failure is the caller's error
class with the dotted key in the message, so the user knows where to look.
``bool`` is never accepted where an ``int`` is asked (TOML ``true`` is not 1)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, Literal

from coco_common.cli import closest

__all__ = ["Fields", "closest"]


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "string",
        int: "integer",
        bool: "boolean",
        float: "number",
        list: "list",
        dict: "table",
        Mapping: "table",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    text = " or ".join(names.get(k, k.__name__) for k in kinds)
    return ("an " if text[0] in "aeiou" else "a ") + text


class Fields:
    """Typed reader over one table. ``label`` prefixes every message (``"aa config"``),
    ``where`` is the table's dotted path (``"token_configs.kbs"``, empty for the top)."""

    def __init__(
        self,
        table: Any,
        *,
        error: type[Exception],
        where: builtins.str = "",
        label: builtins.str = "",
        unknown: Literal["collect", "error"] = "collect",
        _shared: tuple[builtins.list[builtins.str], builtins.list[builtins.str]] | None = None,
    ) -> None:
        self.error = error
        self.where = where
        self.label = label
        self.mode: Literal["collect", "error"] = unknown
        #: dotted names of keys present but never read (``unknown="collect"``)
        self.unknown: builtins.list[builtins.str]
        #: one human line per unknown key: "unknown key K in [T] (did you mean X?)"
        self.notes: builtins.list[builtins.str]
        self.unknown, self.notes = _shared if _shared is not None else ([], [])
        if not isinstance(table, Mapping):
            raise self._error(f"[{where}] must be a table" if where else "must be a table")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    # -- messages ---------------------------------------------------------------
    def name(self, key: builtins.str) -> builtins.str:
        """The dotted name of ``key`` in this table."""
        return f"{self.where}.{key}" if self.where else key

    def _error(self, message: builtins.str) -> Exception:
        return self.error(f"{self.label}: {message}" if self.label else message)

    def fail(self, key: builtins.str, problem: builtins.str) -> Exception:
        """An error about ``key`` (for checks the caller makes on a value it read)."""
        return self._error(f"{self.name(key)} {problem}")

    # -- reads ------------------------------------------------------------------
    def get(
        self,
        key: builtins.str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: builtins.bool = False,
    ) -> Any:
        """The value of ``key`` if it has type ``kind``; ``default`` when absent."""
        self.used.add(key)
        if key not in self.table:
            if required:
                near = closest(key, [k for k in self.table if k not in self.used])
                hint = f" (found unknown key {self.name(near)}: a typo for {key}?)" if near else ""
                raise self._error(f"{self.name(key)} is required{hint}")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, builtins.bool) and bool not in kinds:
            raise self.fail(key, f"must be {_type_name(kind)}, not a boolean")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {_type_name(kind)}, not {type(value).__name__}")
        return value

    def str(
        self, key: builtins.str, default: builtins.str | None = None, *, required: builtins.bool = False
    ) -> builtins.str | None:
        value: builtins.str | None = self.get(key, builtins.str, default, required=required)
        return value

    def int(
        self,
        key: builtins.str,
        default: builtins.int | None = None,
        *,
        required: builtins.bool = False,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> builtins.int | None:
        value: builtins.int | None = self.get(key, builtins.int, default, required=required)
        if value is not None and key in self.table:
            if min is not None and value < min:
                raise self.fail(key, f"is {value}, below the minimum {min}")
            if max is not None and value > max:
                raise self.fail(key, f"is {value}, above the maximum {max}")
        return value

    def bool(
        self, key: builtins.str, default: builtins.bool | None = None, *, required: builtins.bool = False
    ) -> builtins.bool | None:
        value: builtins.bool | None = self.get(key, builtins.bool, default, required=required)
        return value

    def list(
        self,
        key: builtins.str,
        item: type | tuple[type, ...],
        default: builtins.list[Any] | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.list[Any] | None:
        value: builtins.list[Any] | None = self.get(key, builtins.list, default, required=required)
        if value is not None and key in self.table:
            items = item if isinstance(item, tuple) else (item,)
            for i, v in enumerate(value):
                if (isinstance(v, builtins.bool) and bool not in items) or not isinstance(v, items):
                    raise self.fail(f"{key}[{i}]", f"must be {_type_name(item)}")
        return value

    def hex(
        self, key: builtins.str, *, size: builtins.int | None = None, required: builtins.bool = False
    ) -> bytes | None:
        """A hex string (either case, no prefix) decoded; ``size`` in bytes when given."""
        text = self.str(key, required=required)
        if text is None:
            return None
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise self.fail(key, "must be hex") from exc
        if len(text) != 2 * len(raw):  # fromhex skips white space
            raise self.fail(key, "must be hex without spaces")
        if size is not None and len(raw) != size:
            raise self.fail(key, f"must be {size} bytes ({2 * size} hex digits), not {len(raw)}")
        return raw

    def sub(self, key: builtins.str, *, required: builtins.bool = False) -> Fields | None:
        """The nested table ``key`` as a reader sharing this one's unknown-key record."""
        value = self.get(key, Mapping, None, required=required)
        if value is None:
            return None
        return Fields(
            value,
            error=self.error,
            where=self.name(key),
            label=self.label,
            unknown=self.mode,
            _shared=(self.unknown, self.notes),
        )

    # -- the end ----------------------------------------------------------------
    def done(self) -> None:
        """Record (or refuse) every key of this table that nobody read."""
        for k in self.table:
            if k in self.used:
                continue
            hint = closest(k, self.used)
            table = f"[{self.where}]" if self.where else "the top level"
            note = f"unknown key {self.name(k)} in {table}" + (f" (did you mean {hint}?)" if hint else "")
            if self.mode == "error":
                raise self._error(note)
            self.unknown.append(self.name(k))
            self.notes.append(note)
