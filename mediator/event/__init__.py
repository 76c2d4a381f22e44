"""Events: each event class has any number of handlers."""

from mediator.event.aggregate import ConfigEventAggregateError, EventAggregate, EventAggregateError
from mediator.event.base import EventPublish, EventPublisher, EventSubscriber
from mediator.errors import EventBusClosedError, EventHandlerErrors
from mediator.event.local import CancelledRun, EventHandlerRegistry, LocalEventBus
from mediator.event.strategies import BACKGROUND, CONCURRENT, SEQUENTIAL, HandlerRun, PublishStrategy

__all__ = [
    "LocalEventBus",
    "EventHandlerRegistry",
    "EventPublish",
    "EventPublisher",
    "EventSubscriber",
    "EventAggregate",
    "EventAggregateError",
    "ConfigEventAggregateError",
    "EventHandlerErrors",
    "EventBusClosedError",
    "CancelledRun",
    "PublishStrategy",
    "HandlerRun",
    "BACKGROUND",
    "CONCURRENT",
    "SEQUENTIAL",
]
