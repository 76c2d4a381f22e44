"""Errors of the event bus beyond those of python-mediator 0.7."""

from typing import Any, Sequence

from mediator._compat import ExceptionGroup

__all__ = ["EventHandlerErrors", "EventBusClosedError"]


class EventHandlerErrors(ExceptionGroup):
    """The failures of an event's handlers, raised once all of them have run.

    ``event`` is the event; ``handlers[i]`` is the handler that raised ``exceptions[i]``
    (each error also carries a note naming both).
    """

    event: Any
    handlers: Sequence[Any]

    def __new__(
        cls, message: str, errors: Sequence[Exception], event: Any = None, handlers: Sequence[Any] = ()
    ) -> "EventHandlerErrors":
        self = super().__new__(cls, message, errors)
        self.event = event
        self.handlers = tuple(handlers)
        return self

    def __init__(
        self, message: str, errors: Sequence[Exception], event: Any = None, handlers: Sequence[Any] = ()
    ) -> None:
        super().__init__(message, errors)

    def derive(self, errors: Sequence[Exception]) -> "EventHandlerErrors":  # type: ignore[override]
        """The same group with fewer errors (``split``, ``subgroup``, ``except*``)."""
        by_error = {id(error): handler for error, handler in zip(self.exceptions, self.handlers)}
        return EventHandlerErrors(self.message, errors, self.event, [by_error.get(id(e)) for e in errors])


class EventBusClosedError(RuntimeError):
    """``publish`` on an event bus that was closed (``aclose``, or ``async with`` ended)."""


def handler_errors(event: Any, failures: Sequence[Any]) -> EventHandlerErrors:
    """The group for the ``(error, route)`` failures of one publish."""
    return EventHandlerErrors(
        f"{len(failures)} handler(s) of {type(event).__name__} failed",
        [error for error, _ in failures],
        event,
        [route.handler for _, route in failures],
    )
