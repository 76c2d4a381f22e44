"""``memory://``: an in-process broker with the semantics of the others (for tests).

``memory://NAME`` connects to the process-wide broker called NAME (made on first use), so
that a publisher and a worker in one process share it; ``memory://`` alone makes a private
one. Nothing survives the process. The model is that of Redis Streams: one stream per
type family, consumer groups with a cursor per stream, a list of pending (claimed)
messages per group, and a dead-letter list per group.
"""

import asyncio
import itertools
import time
from typing import Any, AsyncIterator, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qs, urlsplit

from mediator.transport.base import DeadLetter, Delivery, Transport, check_name, check_start, type_family
from mediator.transport.errors import TransportClosedError, TransportError

__all__ = ["MemoryTransport", "MemoryBroker"]

# (message_id, type, payload, headers, key)
_Message = Tuple[str, str, bytes, Dict[str, str], Optional[str]]


class _Stream:
    __slots__ = ("entries", "base")

    def __init__(self) -> None:
        self.entries: List[_Message] = []
        self.base = 0  # the sequence number of entries[0]

    @property
    def end(self) -> int:
        return self.base + len(self.entries)

    def trim(self, maxlen: Optional[int]) -> None:
        if maxlen is not None and len(self.entries) > maxlen:
            drop = len(self.entries) - maxlen
            del self.entries[:drop]
            self.base += drop


class _Pending:
    __slots__ = ("message", "consumer", "touched", "ready_at", "count", "released")

    def __init__(self, message: _Message, consumer: Optional[str], now: float, count: int) -> None:
        self.message = message
        self.consumer = consumer  # None: waiting for redelivery (from ready_at)
        self.touched = now
        self.ready_at = now
        self.count = count
        self.released = False


class _Group:
    def __init__(self, claim_idle: float) -> None:
        self.cursors: Dict[str, int] = {}
        self.pending: Dict[Any, _Pending] = {}
        self.dead: Dict[int, DeadLetter] = {}
        self.done: Dict[str, Set[str]] = {}
        self.claim_idle = claim_idle


class MemoryBroker:
    """The shared state of ``memory://NAME`` transports."""

    def __init__(self) -> None:
        self.streams: Dict[str, _Stream] = {}
        self.groups: Dict[str, _Group] = {}
        self.waiters: Set["asyncio.Future[None]"] = set()
        self.ids = itertools.count(1)

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.get_loop().call_soon_threadsafe(_set, waiter)
        self.waiters.clear()


def _set(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


_BROKERS: Dict[str, MemoryBroker] = {}


class MemoryTransport(Transport):
    """A transport on an in-process ``MemoryBroker`` (see the module docstring).

    ``maxlen`` (also ``?maxlen=`` in the URL) bounds each stream: older messages are
    dropped (those still pending in a group stay deliverable to it).
    """

    scheme = "memory"

    def __init__(self, url: str = "memory://", *, codec: Any = None, maxlen: Optional[int] = None) -> None:
        super().__init__(codec=codec)
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError(f"MemoryTransport takes a memory:// URL, got {url!r}")
        name = parts.netloc + parts.path
        query = parse_qs(parts.query)
        if maxlen is None and "maxlen" in query:
            maxlen = int(query["maxlen"][-1])
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
            raise ValueError(f"maxlen must be a positive int or None, got {maxlen!r}")
        self.maxlen = maxlen
        self.name = name
        if name:
            self.broker = _BROKERS.setdefault(name, MemoryBroker())
        else:
            self.broker = MemoryBroker()

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.name or '(private)'}{' closed' if self._closed else ''}>"

    def _check(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")

    def _group(self, group: str) -> _Group:
        found = self.broker.groups.get(group)
        if found is None:
            raise TransportError(f"there is no consumer group {group!r} on {self!r}")
        return found

    async def _close(self) -> None:
        self.broker.wake()

    # -- publishing ----------------------------------------------------------------------------

    async def _send(self, type: str, payload: bytes, key: Optional[str], headers: Dict[str, str], message_id: str) -> None:
        family = type_family(type)
        stream = self.broker.streams.get(family)
        if stream is None:
            stream = self.broker.streams[family] = _Stream()
        stream.entries.append((message_id, type, payload, dict(headers), key))
        stream.trim(self.maxlen)
        self.broker.wake()

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letters(self, group: str) -> AsyncIterator[DeadLetter]:
        self._check()
        found = self.broker.groups.get(group)
        for letter in list(found.dead.values()) if found is not None else ():
            yield letter

    async def requeue(self, letter: DeadLetter) -> None:
        self._check()
        group = self._group(letter.group)
        if group.dead.pop(letter.token, None) is None:
            raise TransportError(f"{letter!r} is not among the dead letters of group {letter.group!r} any more")
        message = (letter.message_id, letter.type, letter.payload, dict(letter.headers), letter.key)
        group.pending[("\0requeue", next(self.broker.ids))] = _Pending(message, None, time.monotonic(), 0)
        self.broker.wake()

    # -- the worker's side ---------------------------------------------------------------------

    async def ensure_group(self, group: str, types: Sequence[str], *, start: str, claim_idle: float) -> None:
        self._check()
        check_name("the group", group)
        check_start(start)
        state = self.broker.groups.get(group)
        if state is None:
            state = self.broker.groups[group] = _Group(claim_idle)
        state.claim_idle = claim_idle
        for family in {type_family(type) for type in types}:
            if family not in state.cursors:
                stream = self.broker.streams.get(family)
                if stream is None:
                    stream = self.broker.streams[family] = _Stream()
                state.cursors[family] = stream.end if start == "latest" else stream.base

    async def fetch(self, group: str, consumer: str, max_messages: int, timeout: float) -> List[Delivery]:
        self._check()
        state = self._group(group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = time.monotonic()
            found = self._take(group, state, consumer, max_messages, now)
            if found or self._closed:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            # Wake at the next due redelivery at the latest.
            due = [
                (p.ready_at if p.consumer is None else p.touched + state.claim_idle) - now
                for p in state.pending.values()
            ]
            if due:
                remaining = min(remaining, max(0.001, min(due)))
            waiter = loop.create_future()
            self.broker.waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                self.broker.waiters.discard(waiter)

    def _take(self, group: str, state: _Group, consumer: str, limit: int, now: float) -> List[Delivery]:
        found: List[Delivery] = []
        for token, pending in state.pending.items():
            if len(found) >= limit:
                return found
            if pending.consumer is None:
                if pending.ready_at > now:
                    continue
            elif now - pending.touched < state.claim_idle:
                continue
            if not pending.released:
                pending.count += 1
            pending.released = False
            pending.consumer = consumer
            pending.touched = now
            found.append(self._delivery(group, token, pending))
        for family, cursor in state.cursors.items():
            stream = self.broker.streams[family]
            cursor = max(cursor, stream.base)
            while cursor < stream.end and len(found) < limit:
                message = stream.entries[cursor - stream.base]
                token = (family, cursor)
                pending = state.pending[token] = _Pending(message, consumer, now, 1)
                found.append(self._delivery(group, token, pending))
                cursor += 1
            state.cursors[family] = cursor
        return found

    @staticmethod
    def _delivery(group: str, token: Any, pending: _Pending) -> Delivery:
        message_id, type, payload, headers, key = pending.message
        return Delivery(group, message_id, type, payload, dict(headers), key, pending.count, token)

    def _settle(self, delivery: Delivery) -> Optional[_Pending]:
        state = self.broker.groups.get(delivery.group)
        if state is None:
            return None
        state.done.pop(delivery.message_id, None)
        return state.pending.pop(delivery.token, None)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check()
        for delivery in deliveries:
            self._settle(delivery)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        self._check()
        pending = self._group(delivery.group).pending.get(delivery.token)
        if pending is not None:
            pending.consumer = None
            pending.ready_at = time.monotonic() + delay
            self.broker.wake()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        self._check()
        now = time.monotonic()
        for delivery in deliveries:
            pending = self._group(delivery.group).pending.get(delivery.token)
            if pending is not None:
                pending.consumer = None
                pending.ready_at = now
                pending.released = True
        self.broker.wake()

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        self._check()
        now = time.monotonic()
        for delivery in deliveries:
            pending = self._group(delivery.group).pending.get(delivery.token)
            if pending is not None and pending.consumer is not None:
                pending.touched = now

    async def dead_letter(self, delivery: Delivery, *, error: str, handler: Optional[str]) -> None:
        self._check()
        state = self._group(delivery.group)
        token = next(self.broker.ids)
        state.dead[token] = DeadLetter(
            delivery.group,
            delivery.message_id,
            delivery.type,
            delivery.payload,
            dict(delivery.headers),
            delivery.key,
            error,
            handler,
            delivery.deliveries,
            token,
        )
        self._settle(delivery)

    async def handlers_done(self, delivery: Delivery) -> FrozenSet[str]:
        self._check()
        return frozenset(self._group(delivery.group).done.get(delivery.message_id, ()))

    async def mark_handlers_done(self, delivery: Delivery, names: Sequence[str]) -> None:
        self._check()
        self._group(delivery.group).done.setdefault(delivery.message_id, set()).update(names)
