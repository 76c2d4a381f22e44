"""Events: each event class has any number of handlers."""

from mediator.event.aggregate import ConfigEventAggregateError, EventAggregate, EventAggregateError
from mediator.event.base import EventPublish, EventPublisher, EventSubscriber
from mediator.event.local import EventHandlerRegistry, LocalEventBus

__all__ = [
    "LocalEventBus",
    "EventHandlerRegistry",
    "EventPublish",
    "EventPublisher",
    "EventSubscriber",
    "EventAggregate",
    "EventAggregateError",
    "ConfigEventAggregateError",
]
