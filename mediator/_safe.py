"""Describing user objects in error messages and log lines, whatever their ``repr`` does.

A failure report must never fail: an event, handler or result whose ``__repr__`` raises
(or returns something that is not a string) is described by its class and address
instead, with the error its ``repr`` raised. Both engines use these.
"""

from typing import Any

__all__ = ["safe_repr", "SafeRepr"]


def safe_repr(obj: Any) -> str:
    """``repr(obj)``, or ``<module.Class object at 0x...: repr() raised Error>`` if that fails."""
    try:
        return repr(obj)
    except Exception as error:
        # object.__repr__ reads the type's own name slots: no user code runs.
        return f"{object.__repr__(obj)[:-1]}: repr() raised {type(error).__name__}>"


class SafeRepr:
    """Wraps an object for a ``%r`` of a log call: formatted with ``safe_repr``, and only
    if the record is emitted."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __repr__(self) -> str:
        return safe_repr(self.obj)

    __str__ = __repr__


class HandlerIdentity:
    """What makes two registrations the same handler (the callable they call), as a set
    member that never fails: the callable's own equality where it is hashable, else its
    identity; an ``__eq__`` or ``__hash__`` that raises counts as identity too."""

    __slots__ = ("fn", "_hash", "_by_value")

    def __init__(self, handler: Any) -> None:
        try:
            fn = getattr(handler, "fn", handler)
        except Exception:  # a handler object whose __getattr__ fails
            fn = handler
        self.fn = fn
        try:
            self._hash = hash(fn)
            self._by_value = True
        except Exception:  # unhashable, or its __hash__ fails
            self._hash = id(fn)
            self._by_value = False

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HandlerIdentity):
            return NotImplemented
        if self.fn is other.fn:
            return True
        if not (self._by_value and other._by_value):
            return False
        try:
            return bool(self.fn == other.fn)
        except Exception:
            return False
