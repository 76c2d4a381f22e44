"""The event store's errors; ``EventStoreError`` is the base of them all.

The codec's own errors (``EncodeError``: an event the codec cannot encode;
``UnknownTypeError``: a stored type no registered class has; ``DecodeError``: stored bytes
that do not decode) are raised as they are and re-exported by ``mediator.eventsourcing``.
"""

from typing import Any, Optional, Tuple

__all__ = [
    "EventStoreError",
    "ConcurrencyError",
    "AggregateNotFoundError",
    "NoApplierError",
    "StoreClosedError",
]


class EventStoreError(Exception):
    """Base of the event store's errors."""


class ConcurrencyError(EventStoreError):
    """An append found its stream at another version than the one it expected.

    ``stream`` is the stream, ``expected`` the version the append required (``0``: the
    stream must not exist yet), ``actual`` the version the store has.
    """

    def __init__(self, stream: str, expected: Optional[int], actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, not at the expected version {expected}"
        )
        self.stream, self.expected, self.actual = stream, expected, actual

    def __reduce__(self) -> Tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.stream, self.expected, self.actual))


class AggregateNotFoundError(EventStoreError, LookupError):
    """``Repository.get`` found no events for that id (or fewer than the version asked)."""

    def __init__(self, cls: type, id: str, message: str = "") -> None:
        super().__init__(message or f"no {cls.__qualname__} with id {id!r}: its stream has no events")
        self.cls, self.id = cls, id

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.cls, self.id, str(self)))


class NoApplierError(EventStoreError, TypeError):
    """An aggregate was given an event class none of its ``@applies`` methods takes."""


class StoreClosedError(EventStoreError):
    """The store was closed (or never opened): it takes no more calls."""
