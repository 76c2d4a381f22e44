"""``Subscription``: the store's log through projection handlers, from a named checkpoint.

Events are read in position order after the checkpoint and published, in batches, on the
bus, each batch inside one store transaction that also moves the checkpoint. Handlers
run to completion (the ``sequential`` strategy) before the transaction commits. A
handler may ask for two injected arguments:

- ``transaction``: the store's ``Transaction`` of the batch. What it writes through it
  commits with the checkpoint, so after a crash an event is never applied twice to such
  a read model (exactly once in effect);
- ``recorded``: the ``RecordedEvent`` (stream, version, position, metadata, ...).

Other handlers get every event at least once (a batch that fails or is interrupted is
delivered again from its start).
"""

import asyncio
from typing import Any, Awaitable, Callable, Optional

from mediator.event.strategies import SEQUENTIAL
from mediator.eventsourcing.store import EventStore, Transaction, check_name

__all__ = ["Subscription"]


class Subscription:
    """Runs ``store``'s events through ``bus`` from the checkpoint ``name``.

    ``batch_size``: events per transaction. ``position`` is the position of the last
    event handled (the checkpoint as this object last saw it).
    """

    def __init__(self, store: EventStore, bus: Any, *, name: str, batch_size: int = 100) -> None:
        if not isinstance(store, EventStore):
            raise TypeError(f"Subscription needs an EventStore (open_store(url)), got {store!r}")
        if not callable(getattr(bus, "publish", None)):
            raise TypeError(f"Subscription needs an event bus with publish() (a LocalEventBus), got {bus!r}")
        check_name("subscription", name)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.store = store
        self.bus = bus
        self.name = name
        self.batch_size = batch_size
        self.position = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} at {self.position} on {self.store!r}>"

    async def catch_up(self) -> int:
        """Handle every event after the checkpoint up to the end of the log; returns how
        many were handled."""
        store = self.store
        self.position = await store.checkpoint(self.name)
        return await self._drain()

    async def rebuild(self, reset: Optional[Callable[[Transaction], Awaitable[Any]]] = None) -> int:
        """Start again from position 0 and catch up; returns how many were handled.

        ``reset(transaction)``, if given, runs in the transaction that moves the
        checkpoint back to 0 (clear the read model there, and both happen or neither).
        """
        async with self.store.transaction() as tx:
            if reset is not None:
                await reset(tx)
            await tx.set_checkpoint(self.name, 0)
        self.position = 0
        return await self._drain()

    async def run(self) -> None:
        """Catch up, then handle each event as it is committed, until the store is closed
        (then it returns) or the task is cancelled."""
        store = self.store
        await self.catch_up()
        while not store.closed:
            await self._drain()
            if store.closed:
                return
            await store._wait_for_commit(self.position)

    async def _drain(self) -> int:
        store = self.store
        count = 0
        while not store.closed:
            rows = await store._read_all(self.position, self.batch_size)
            if not rows:
                break
            await self._handle(rows)
            count += len(rows)
        return count

    async def _handle(self, rows: list) -> None:
        store, bus = self.store, self.bus
        record = store._record
        records = [record(row) for row in rows]
        async with store.transaction() as tx:
            for recorded in records:
                await bus.publish(recorded.event, strategy=SEQUENTIAL, transaction=tx, recorded=recorded)
            await tx.set_checkpoint(self.name, records[-1].position)
        self.position = records[-1].position
