"""``Relay``: publishes an event store's log to a transport, from a named checkpoint.

The store is the outbox: events committed to it reach the broker at least once. The
relay reads the log after its checkpoint in batches, publishes each batch (and waits for
the broker's acknowledgements), and only then moves the checkpoint, in a store
transaction. Events are published as stored (type string and payload, not decoded), so
a relay needs none of the event classes. A relay killed between a publish and its checkpoint publishes that batch
again when it restarts: duplicates, never a gap. Each message's id is the stored event's
id, so a worker's inbox removes those duplicates.

Each message carries the headers ``stream``, ``version`` and ``position`` of the stored
event, and ``metadata`` (JSON) when it has any.
"""

import asyncio
import json
import logging
from typing import Any, Dict, List, Tuple

from mediator.transport.base import Transport
from mediator.transport.errors import TransportClosedError

__all__ = ["Relay"]

logger = logging.getLogger("mediator.transport")


class Relay:
    """Publishes ``store``'s events to ``transport`` from the checkpoint ``relay:NAME``.

    ``await relay.catch_up()`` publishes up to the end of the log and returns how many it
    published; ``await relay.run()`` catches up, then publishes events as they are
    committed, until ``aclose()``, the store is closed, or the task is cancelled.
    ``batch_size`` events are published between two checkpoints (at most that many
    duplicates after a crash). ``position`` is the checkpoint as this relay last saw it.
    """

    def __init__(self, store: Any, transport: Transport, *, name: str, batch_size: int = 500) -> None:
        from mediator.eventsourcing import EventStore

        if not isinstance(store, EventStore):
            raise TypeError(f"Relay needs an EventStore (open_store(url)), got {store!r}")
        if not isinstance(transport, Transport):
            raise TypeError(f"Relay needs a mediator.transport.Transport, got {transport!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a relay's name must be a non-empty str, got {name!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.store = store
        self.transport = transport
        self.name = name
        self.checkpoint = f"relay:{name}"
        self.batch_size = batch_size
        self.position = 0
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Relay {self.name!r} at {self.position} from {self.store!r} to {self.transport!r}>"

    async def catch_up(self) -> int:
        """Publish every event after the checkpoint up to the end of the log; returns how many."""
        self.position = await self.store.checkpoint(self.checkpoint)
        return await self._drain()

    async def run(self) -> None:
        """Catch up, then follow the log live until ``aclose()`` or the store is closed."""
        self._stopping = False
        store = self.store
        await self.catch_up()
        while not self._stopping and not store.closed:
            await store._wait_for_commit(self.position)
            if self._stopping or store.closed:
                return
            await self._drain()

    async def aclose(self) -> None:
        """Make ``run()`` return after the batch it is publishing (checkpointed)."""
        self._stopping = True

    async def _drain(self) -> int:
        published = 0
        while True:
            rows = await self._rows()
            if not rows:
                return published
            await self._publish(rows)
            position = rows[-1][0]
            async with self.store.transaction() as tx:
                await tx.set_checkpoint(self.checkpoint, position)
            self.position = position
            published += len(rows)
            if len(rows) < self.batch_size or self._stopping:
                return published

    async def _rows(self) -> List[Tuple[Any, ...]]:
        """The next batch as the store holds it: ``(position, stream, version, id, type,
        data, metadata)``, the payload left encoded (the relay needs no event classes)."""
        store = self.store
        await store._ready()
        rows = await store._read_all(self.position, self.batch_size)
        return [tuple(row[:7]) for row in rows]

    async def _publish(self, rows: List[Tuple[Any, ...]]) -> None:
        transport = self.transport
        if transport.closed:
            raise TransportClosedError(f"{transport!r} is closed: the relay {self.name!r} cannot publish")
        await transport._send_many(
            [
                (type, data.encode() if isinstance(data, str) else bytes(data), None, _headers(stream, version, position, metadata), id)
                for position, stream, version, id, type, data, metadata in rows
            ]
        )


def _headers(stream: str, version: int, position: int, metadata: Any) -> Dict[str, str]:
    headers = {"stream": stream, "version": str(version), "position": str(position)}
    if metadata:
        if isinstance(metadata, bytes):
            metadata = metadata.decode()
        if not isinstance(metadata, str):
            metadata = json.dumps(metadata, separators=(",", ":"), default=str)
        if metadata not in ("{}", "null"):
            headers["metadata"] = metadata
    return headers
