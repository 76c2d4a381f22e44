"""``LocalEventBus``: every handler of an event class, in this process."""

from typing import Any, Optional, Sequence

from mediator._engine import EventDispatcher
from mediator.common.factory import CallableHandlerPolicy, HandlerFactoryCascade, PolicyType
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import CollectionHandlerStore, HandlerEntry, HandlerRegistry
from mediator.common.routes import compile_route
from mediator.event.base import EventPublisher, EventSubscriber

__all__ = ["LocalEventBus", "EventHandlerRegistry"]


class EventHandlerRegistry(HandlerRegistry):
    """A registry of event handlers (any number per class), to ``include`` into a bus."""

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
    ) -> None:
        super().__init__(CollectionHandlerStore(), policies or [CallableHandlerPolicy()], cascade, modifiers)


class _GroupStore(CollectionHandlerStore):
    """Keeps every entry and compiles it into the bus's per-class handler tuple."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher

    def add(self, entry: HandlerEntry) -> None:
        route = compile_route(entry)
        super().add(entry)
        self._dispatcher._group_add(entry.key, route)


class LocalEventBus(EventDispatcher, EventPublisher, HandlerRegistry, EventSubscriber):
    """Publishes each event to all its handlers, in registration order.

    By default ``publish`` starts every handler as a background task and returns; with
    ``sync_mode=True`` it returns once all have finished and raises an exception group
    of their failures. Background failures are logged on the ``mediator`` logger.
    """

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
        sync_mode: bool = False,
    ) -> None:
        EventDispatcher.__init__(self, sync_mode)
        HandlerRegistry.__init__(self, _GroupStore(self), policies or [CallableHandlerPolicy()], cascade, modifiers)
