"""``Repository``: load aggregates from a store and save them, with the store as the outbox.

``save`` writes every aggregate's pending events in one transaction, each stream checked
against the version its aggregate was loaded at. With a ``bus``, the same transaction
puts the new events' positions in the store's outbox; after the commit they are
published on the bus and then taken out of the outbox. A process that dies in between
leaves them there, and the first ``get`` or ``save`` of a ``Repository`` with a bus (in
this process or the next one) publishes them: at least once, and once when nothing
interrupts the save.
"""

import asyncio
import json
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, TypeVar

from mediator.errors import EventHandlerErrors
from mediator.eventsourcing.aggregate import Aggregate
from mediator.eventsourcing.errors import AggregateNotFoundError
from mediator.eventsourcing.store import EventStore, NewEvent, Snapshot, encode_metadata

__all__ = ["Repository"]

A = TypeVar("A", bound=Aggregate)


def snapshot_type(cls: type) -> str:
    """The name of an aggregate class's snapshot form."""
    return f"{cls.__module__}.{cls.__qualname__}#{getattr(cls, 'snapshot_version', 1)}"


class Repository:
    """Loads and saves aggregates of any class on ``store``.

    ``bus``: an event publisher (e.g. ``LocalEventBus``) to publish saved events on, after
    their commit (the store keeps them in its outbox until they are). ``snapshot_every``:
    save a snapshot of an aggregate each time its version crosses a multiple of N, and
    load from the latest snapshot.
    """

    def __init__(self, store: EventStore, *, bus: Any = None, snapshot_every: Optional[int] = None) -> None:
        if not isinstance(store, EventStore):
            raise TypeError(f"Repository needs an EventStore (open_store(url)), got {store!r}")
        if bus is not None and not callable(getattr(bus, "publish", None)):
            raise TypeError(f"bus must have a publish(event) method (e.g. a LocalEventBus), got {bus!r}")
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1
        ):
            raise ValueError(f"snapshot_every must be None or an int >= 1, got {snapshot_every!r}")
        self.store = store
        self.bus = bus
        self.snapshot_every = snapshot_every
        self._delivered = bus is None  # whether the outbox was emptied since this repository began
        self._delivery_lock: Optional[asyncio.Lock] = None
        self._known: Set[type] = set()

    def __repr__(self) -> str:
        return f"<Repository {self.store!r} bus={self.bus!r} snapshot_every={self.snapshot_every}>"

    def _know(self, cls: Type[Aggregate]) -> None:
        if cls not in self._known:
            cls._register_events(self.store.codec)
            self._known.add(cls)

    # -- loading -------------------------------------------------------------------

    async def get(self, cls: Type[A], id: str, *, version: Optional[int] = None) -> A:
        """The aggregate ``id`` of class ``cls``, rebuilt from its events.

        ``version``: rebuild the state it had after that many events. Raises
        ``AggregateNotFoundError`` if the stream has no events (or fewer than ``version``).
        """
        if not (isinstance(cls, type) and issubclass(cls, Aggregate)):
            raise TypeError(f"Repository.get needs an Aggregate subclass, got {cls!r}")
        if not isinstance(id, str) or not id:
            raise TypeError(f"an aggregate id must be a non-empty str, got {id!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be None or an int >= 1, got {version!r}")
        self._know(cls)
        if not self._delivered:
            await self.deliver_pending()
        store = self.store
        aggregate = cls._blank(id)
        after = 0
        if self.snapshot_every is not None:
            await store._ready()
            snapshot = await store._load_snapshot(id)
            if (
                snapshot is not None
                and snapshot.type == snapshot_type(cls)
                and (version is None or snapshot.version <= version)
            ):
                aggregate.restore_state(json.loads(snapshot.data))
                aggregate.version = after = snapshot.version
        aggregate._replay(await store._load_events(id, after, version))
        if aggregate.version == 0:
            raise AggregateNotFoundError(cls, id)
        if version is not None and aggregate.version < version:
            raise AggregateNotFoundError(
                cls, id, f"{cls.__qualname__} {id!r} has {aggregate.version} events, not {version}"
            )
        return aggregate

    # -- saving --------------------------------------------------------------------

    async def save(self, *aggregates: Aggregate, metadata: Optional[Dict[str, Any]] = None) -> None:
        """Save the pending events of ``aggregates`` in one transaction.

        Each stream must still be at the version its aggregate was loaded at, else
        ``ConcurrencyError`` and nothing is saved. On success each aggregate's
        ``pending`` is empty; on any failure every aggregate is left as it was.
        ``metadata``: a JSON dict stored with every event of this save.
        """
        seen: Set[str] = set()
        for aggregate in aggregates:
            if not isinstance(aggregate, Aggregate):
                raise TypeError(f"Repository.save takes Aggregates, got {aggregate!r}")
            if aggregate.id in seen:
                raise ValueError(f"Repository.save was given aggregate {aggregate.id!r} twice")
            seen.add(aggregate.id)
            self._know(type(aggregate))
        if not self._delivered:
            await self.deliver_pending()
        store = self.store
        meta = encode_metadata(metadata)
        work: List[Tuple[Aggregate, int, List[NewEvent], Optional[Snapshot]]] = []
        for aggregate in aggregates:
            pending = aggregate.pending
            if not pending:
                continue
            expected = aggregate.version - len(pending)
            new = store._encode(pending, None)
            if meta is not None:
                new = [event._replace(metadata=meta) for event in new]
            work.append((aggregate, expected, new, self._snapshot_of(aggregate, expected)))
        if not work:
            return
        positions: List[int] = []
        async with store.transaction() as tx:
            for aggregate, expected, new, snapshot in work:
                _, added = await tx.append(aggregate.id, new, expected)
                positions += added
                if snapshot is not None:
                    await tx.save_snapshot(snapshot)
            if self.bus is not None:
                await tx.add_deliveries(positions)
        events: List[Any] = []
        for aggregate, _, _, _ in work:
            events += aggregate.pending
            aggregate.pending = []
        if self.bus is not None:
            await self._publish(events, positions)

    def _snapshot_of(self, aggregate: Aggregate, expected: int) -> Optional[Snapshot]:
        every = self.snapshot_every
        if every is None or aggregate.version // every == expected // every:
            return None
        cls = type(aggregate)
        state = aggregate.snapshot_state()
        try:
            data = json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            same = json.loads(data) == state
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"cannot snapshot {cls.__qualname__} {aggregate.id!r}: its state is not JSON ({error}); "
                "override snapshot_state() and restore_state()"
            ) from None
        if not same:
            raise TypeError(
                f"cannot snapshot {cls.__qualname__} {aggregate.id!r}: its state does not survive JSON as it is "
                "(tuples, sets, non-str keys?); override snapshot_state() and restore_state()"
            )
        return Snapshot(aggregate.id, aggregate.version, snapshot_type(cls), data.encode())

    # -- the outbox ----------------------------------------------------------------

    async def deliver_pending(self) -> int:
        """Publish the events committed but not yet published (the outbox); returns how
        many. ``get`` and ``save`` do it first, once per repository; call it to do it now."""
        if self.bus is None:
            return 0
        if self._delivery_lock is None:
            self._delivery_lock = asyncio.Lock()
        async with self._delivery_lock:
            store = self.store
            async with store.transaction() as tx:
                pending = await tx.deliveries()
            publishing = store._publishing
            pending = [position for position in pending if position not in publishing]  # in flight here
            count = 0
            if pending:
                events, found = await store._load_positions(pending)
                lost = sorted(set(pending) - set(found))
                if lost:  # positions of a transaction that never committed: nothing to publish
                    await self._forget(lost)
                await self._publish(events, found)
                count = len(events)
            self._delivered = True
            return count

    async def _publish(self, events: Sequence[Any], positions: Sequence[int]) -> None:
        """Publish ``events`` in order; take the published ones out of the outbox."""
        bus = self.bus
        done: List[int] = []
        failures: List[EventHandlerErrors] = []
        publishing = self.store._publishing
        publishing.update(positions)  # before any await: no other repository here publishes them too
        try:
            for event, position in zip(events, positions):
                try:
                    await bus.publish(event)
                except EventHandlerErrors as error:  # its handlers ran: delivered
                    failures.append(error)
                done.append(position)
        finally:
            if len(done) < len(positions):
                self._delivered = False  # the rest stays in the outbox: the next get/save retries
            try:
                if done:
                    await asyncio.shield(self._forget(done))
            finally:
                publishing.difference_update(positions)
        if failures:
            raise failures[0] if len(failures) == 1 else EventHandlerErrors(
                f"handlers of {len(failures)} published events failed",
                list(failures),
            )

    async def _forget(self, positions: List[int]) -> None:
        await self.store._forget_deliveries(positions)
