"""``memory://``: an event store in this process's memory (tests, prototypes).

Everything the other stores guarantee holds within the process (one writer at a time,
a transaction's writes applied all at once at commit); nothing survives the process.
"""

import asyncio
import json
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mediator.codec import Codec
from mediator.eventsourcing.errors import ConcurrencyError
from mediator.eventsourcing.store import (
    EventStore,
    NewEvent,
    Row,
    Snapshot,
    Transaction,
    check_name,
    encode_value,
)

__all__ = ["MemoryEventStore"]


class _MemoryTransaction(Transaction):
    """Writes are staged here and applied to the store in one step at commit."""

    store: "MemoryEventStore"

    def __init__(self, store: "MemoryEventStore") -> None:
        self.store = store
        self._rows: List[Row] = []
        self._versions: Dict[str, int] = {}
        self._checkpoints: Dict[str, int] = {}
        self._snapshots: Dict[str, Snapshot] = {}
        self._deliveries: Dict[int, bool] = {}  # position -> added (True) / removed (False)
        self._values: Dict[Tuple[str, str], Optional[str]] = {}  # None: deleted
        self._done = False

    def _version_of(self, stream: str) -> int:
        version = self._versions.get(stream)
        return version if version is not None else len(self.store._streams.get(stream, ()))

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: Optional[int]
    ) -> Tuple[int, List[int]]:
        current = self._version_of(stream)
        if expected_version is not None and expected_version != current:
            raise ConcurrencyError(stream, expected_version, current)
        store = self.store
        position = len(store._log) + len(self._rows)
        now = time.time()
        positions = []
        for event in events:
            position += 1
            current += 1
            self._rows.append((position, stream, current, event.id, event.type, event.data, event.metadata, now))
            positions.append(position)
        self._versions[stream] = current
        return current, positions

    async def checkpoint(self, name: str) -> int:
        if name in self._checkpoints:
            return self._checkpoints[name]
        return self.store._checkpoints.get(name, 0)

    async def set_checkpoint(self, name: str, position: int) -> None:
        self._checkpoints[name] = position

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        old = self._snapshots.get(snapshot.stream) or self.store._snapshots.get(snapshot.stream)
        if old is None or old.version <= snapshot.version:
            self._snapshots[snapshot.stream] = snapshot

    async def add_deliveries(self, positions: Sequence[int]) -> None:
        for position in positions:
            self._deliveries[position] = True

    async def remove_deliveries(self, positions: Sequence[int]) -> None:
        for position in positions:
            self._deliveries[position] = False

    async def deliveries(self, limit: Optional[int] = None) -> List[int]:
        pending = set(self.store._deliveries)
        for position, added in self._deliveries.items():
            (pending.add if added else pending.discard)(position)
        return sorted(pending)[:limit]

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        check_name("namespace", namespace)
        check_name("key", key)
        text = self._values[(namespace, key)] if (namespace, key) in self._values else self.store._values.get(
            (namespace, key)
        )
        return default if text is None else json.loads(text)

    async def put(self, namespace: str, key: str, value: Any) -> None:
        check_name("namespace", namespace)
        check_name("key", key)
        self._values[(namespace, key)] = encode_value(namespace, key, value)

    async def delete(self, namespace: str, key: str) -> None:
        self._values[(namespace, key)] = None

    async def items(self, namespace: str) -> List[Tuple[str, Any]]:
        merged: Dict[str, Optional[str]] = {k: v for (ns, k), v in self.store._values.items() if ns == namespace}
        merged.update({k: v for (ns, k), v in self._values.items() if ns == namespace})
        return [(key, json.loads(text)) for key, text in sorted(merged.items()) if text is not None]

    async def commit(self) -> None:  # one step, no await: all of it or none of it
        store = self.store
        self._done = True
        for row in self._rows:
            store._log.append(row)
            store._streams.setdefault(row[1], []).append(row)
        store._checkpoints.update(self._checkpoints)
        store._snapshots.update(self._snapshots)
        for position, added in self._deliveries.items():
            if added:
                store._deliveries[position] = None
            else:
                store._deliveries.pop(position, None)
        for key, text in self._values.items():
            if text is None:
                store._values.pop(key, None)
            else:
                store._values[key] = text
        store._writer.release()

    async def rollback(self) -> None:
        if not self._done:
            self._done = True
            self.store._writer.release()


class MemoryEventStore(EventStore):
    """The ``memory://`` store: lists and dicts, one writer at a time."""

    def __init__(self, url: str = "memory://", *, codec: Optional[Codec] = None, poll_interval: float = 0.05) -> None:
        super().__init__(codec=codec)
        self.url = url
        self.poll_interval = poll_interval
        self._log: List[Row] = []
        self._streams: Dict[str, List[Row]] = {}
        self._checkpoints: Dict[str, int] = {}
        self._snapshots: Dict[str, Snapshot] = {}
        self._deliveries: Dict[int, None] = {}
        self._values: Dict[Tuple[str, str], str] = {}
        self._writer: Any = None  # an asyncio.Lock, made in the loop (on 3.9 a Lock binds the loop it is made in)

    def __repr__(self) -> str:
        return f"<MemoryEventStore {self.url!r}>"

    async def _open(self) -> None:
        self._writer = asyncio.Lock()

    async def _close(self) -> None:
        pass

    async def _begin(self) -> Transaction:
        await self._writer.acquire()
        return _MemoryTransaction(self)

    async def _read_stream(self, stream: str, after: int, to_version: Optional[int], limit: int) -> List[Row]:
        rows = self._streams.get(stream, ())
        end = len(rows) if to_version is None else min(to_version, len(rows))
        return list(rows[after : min(end, after + limit)])

    async def _read_all(self, after: int, limit: Optional[int]) -> List[Row]:
        return self._log[after:] if limit is None else self._log[after : after + limit]

    async def _version(self, stream: str) -> int:
        return len(self._streams.get(stream, ()))

    async def _load_snapshot(self, stream: str) -> Optional[Snapshot]:
        return self._snapshots.get(stream)
