"""Event publishing and subscribing interfaces."""

from typing import Any, AsyncContextManager, AsyncIterator, Iterable, Iterator

from contextlib import asynccontextmanager

from mediator.common.registry import HandlerEntry, HandlerStore

__all__ = ["EventPublish", "EventPublisher", "EventSubscriber"]


class EventPublish:
    """Something events can be published to."""

    async def publish(self, obj: Any, **kwargs: Any) -> None:
        """Publish the event ``obj``; ``kwargs`` are injected into its handlers."""
        raise NotImplementedError


class EventPublisher(EventPublish):
    """An event publisher with transactions."""

    def transaction(self) -> AsyncContextManager[EventPublish]:
        """An async context manager yielding where to publish; by default, this publisher."""
        return _itself(self)


@asynccontextmanager
async def _itself(publisher: EventPublish) -> AsyncIterator[EventPublish]:
    yield publisher


class EventSubscriber(HandlerStore):
    """Something event handler entries can be connected to."""

    def add(self, entry: HandlerEntry) -> None:
        raise NotImplementedError

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[HandlerEntry]:
        raise NotImplementedError
