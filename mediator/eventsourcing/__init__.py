"""Event sourcing on this bus: aggregates, an asyncio event store, projections.

``open_store(url)`` opens a store (``memory://``, ``sqlite:///path.db``,
``postgresql://...``); ``Repository(store, bus=...)`` loads and saves ``Aggregate``s and
publishes their events on the bus after the commit (the store is the outbox);
``Subscription(store, bus, name=...)`` runs the store's log through projection handlers
from a named checkpoint. Events are encoded by ``mediator.codec``.
"""

from mediator.eventsourcing.aggregate import Aggregate, applies
from mediator.codec import CodecError, DecodeError, EncodeError, UnknownTypeError
from mediator.eventsourcing.errors import (
    AggregateNotFoundError,
    ConcurrencyError,
    EventStoreError,
    NoApplierError,
    StoreClosedError,
)
from mediator.eventsourcing.records import RecordedEvent
from mediator.eventsourcing.repository import Repository
from mediator.eventsourcing.store import EventStore, Transaction, open_store
from mediator.eventsourcing.subscription import Subscription

__all__ = [
    "Aggregate",
    "applies",
    "Repository",
    "Subscription",
    "open_store",
    "EventStore",
    "Transaction",
    "RecordedEvent",
    "EventStoreError",
    "ConcurrencyError",
    "AggregateNotFoundError",
    "NoApplierError",
    "StoreClosedError",
    "CodecError",
    "EncodeError",
    "DecodeError",
    "UnknownTypeError",
]
