"""Plain record classes: what runner used dataclasses for, without importing dataclasses.

Why: every ``runner run`` is a fresh interpreter, and ``import dataclasses`` pulls in inspect, ast, dis,
tokenize and copy, then generates code for every class: about 25 ms on the hot path here, more than many
of a container start's real steps. A record here writes its own ``__init__`` (explicit, and cheap to load
from bytecode) and names its fields once in ``_fields``; this base gives it the rest of what the dataclass
gave: ``__eq__``, ``__repr__``, a dict form, and for :class:`FrozenRecord` immutability and a hash.

Standard library only (shipped into the VM guest with the engine).
"""

from __future__ import annotations


class Record:
    """A mutable record: equal when of the same class with equal fields; unhashable, like a dataclass."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(" + ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields) + ")"


class FrozenRecord(Record):
    """An immutable record (set fields in ``__init__`` with ``_init``); hashable by its fields."""

    __slots__ = ()

    def _init(self, **values) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._values())


def asdict(obj):
    """Like ``dataclasses.asdict``: records become dicts, recursively through lists, tuples and dicts."""
    if isinstance(obj, Record):
        return {name: asdict(getattr(obj, name)) for name in obj._fields}
    if isinstance(obj, list):
        return [asdict(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {asdict(k): asdict(v) for k, v in obj.items()}
    return obj
