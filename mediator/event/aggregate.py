"""``EventAggregate``: stage events, then publish them together in one transaction."""

from typing import Any, Dict, List, Optional, Tuple, TypeVar

from mediator._compat import ExceptionGroup
from mediator._safe import safe_repr
from mediator.event.base import EventPublisher

__all__ = ["EventAggregate", "EventAggregateError", "ConfigEventAggregateError"]

A = TypeVar("A", bound="EventAggregate")


class EventAggregateError(Exception):
    """Base of the event aggregate errors."""


class ConfigEventAggregateError(AssertionError, EventAggregateError):
    """The aggregate has no publisher to commit to."""


class EventAggregate:
    """Collects events (``enqueue``) and publishes them in order on ``commit``."""

    def __init__(self) -> None:
        self._publisher: Optional[EventPublisher] = None
        self._staged: List[Tuple[Any, Dict[str, Any]]] = []

    def use(self: A, publisher: EventPublisher) -> A:
        """Commit to ``publisher`` from now on; returns the aggregate."""
        self._publisher = publisher
        return self

    def enqueue(self, obj: Any, **kwargs: Any) -> None:
        """Stage the event ``obj`` with its injected ``kwargs``."""
        self._staged.append((obj, kwargs))

    def cleanup(self) -> None:
        """Drop every staged event."""
        self._staged.clear()

    async def commit(self) -> None:
        """Publish the staged events in order inside one ``publisher.transaction()``.

        An event leaves the stage once its handlers have run, even if some of them
        failed (their errors are raised as an exception group). If a publish fails
        otherwise, that event and the ones after it stay staged: nothing is lost, and
        ``commit`` can be retried.
        """
        publisher = self._publisher
        if publisher is None:
            raise ConfigEventAggregateError(f"{safe_repr(self)} has no publisher: call use(publisher) before commit()")
        staged = self._staged
        async with publisher.transaction() as context:
            while staged:
                obj, kwargs = staged[0]
                try:
                    await context.publish(obj, **kwargs)
                except ExceptionGroup:  # delivered; some handlers failed
                    del staged[0]
                    raise
                del staged[0]
