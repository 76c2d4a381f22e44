"""Inboxes: a worker's record of the message ids a group has processed (opt in).

``Worker(..., inbox=...)`` asks ``seen(group, message_id)`` before dispatching a message
(a seen one is acknowledged without running the handlers) and calls
``record(group, message_id)`` once all its handlers have succeeded, before acknowledging
it. Duplicates a broker delivers (redeliveries after a crash, publishes retried with the
same ``message_id``) then run the handlers once. A crash between the handlers' success
and ``record`` still runs them twice; only an inbox written in the same transaction as
the handlers' own effects closes that gap.
"""

import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Optional, Tuple

__all__ = ["Inbox", "InboxScope", "MemoryInbox", "RedisInbox", "StoreInbox"]


class InboxScope:
    """One message's passage through an inbox (what ``Inbox.scope`` yields to the worker).

    ``seen``: the message was processed already (skip it). ``inject``: extra arguments for
    the handlers (``StoreInbox``: ``transaction``). The worker sets ``succeeded`` when
    every handler succeeded: the inbox then records the message as the scope exits.
    ``atomic``: the handlers' effects through ``inject`` are undone when the message
    fails (so none of its handlers counts as done).
    """

    __slots__ = ("seen", "inject", "atomic", "succeeded")

    def __init__(self, seen: bool, inject: Optional[Dict[str, Any]] = None, atomic: bool = False) -> None:
        self.seen = seen
        self.inject = inject or {}
        self.atomic = atomic
        self.succeeded = False


class Inbox:
    """The interface a worker's inbox implements: ``seen`` and ``record``, or ``scope``."""

    async def seen(self, group: str, message_id: str) -> bool:
        """Whether ``message_id`` was recorded for ``group``."""
        raise NotImplementedError

    async def record(self, group: str, message_id: str) -> None:
        """Record ``message_id`` as processed by ``group``."""
        raise NotImplementedError

    @asynccontextmanager
    async def scope(self, group: str, message_id: str) -> AsyncIterator[InboxScope]:
        """``seen`` before the handlers run, ``record`` after they all succeeded."""
        scope = InboxScope(await self.seen(group, message_id))
        yield scope
        if scope.succeeded and not scope.seen:
            await self.record(group, message_id)


class MemoryInbox(Inbox):
    """An inbox in this process's memory (tests, single-process use); ``ttl`` in seconds."""

    def __init__(self, ttl: Optional[float] = None) -> None:
        self.ttl = ttl
        self._ids: Dict[Tuple[str, str], float] = {}

    async def seen(self, group: str, message_id: str) -> bool:
        recorded = self._ids.get((group, message_id))
        if recorded is None:
            return False
        if self.ttl is not None and time.monotonic() - recorded > self.ttl:
            del self._ids[(group, message_id)]
            return False
        return True

    async def record(self, group: str, message_id: str) -> None:
        self._ids[(group, message_id)] = time.monotonic()


class _Rollback(Exception):
    pass


class StoreInbox(Inbox):
    """An inbox in an event store's database, written in the handlers' own transaction.

    For each message the worker opens a store transaction, skips the message if its id is
    in the inbox, runs the handlers with that transaction injected as ``transaction``
    (what they write through it, e.g. ``transaction.put(...)`` or ``execute(...)``) and
    adds the id to the inbox in the same transaction, which commits before the message is
    acknowledged. The side effects and the inbox row commit together or not at all:
    exactly once in effect. A message with a failed handler is rolled back whole (its
    handlers all run again on the redelivery). Entries are kept in the store's read-model
    table, namespace ``namespace`` (default ``"mediator.inbox"``), keyed ``GROUP:ID``.
    The store serializes writers (SQLite: one at a time), so the handlers of such a
    worker effectively run one message at a time there.
    """

    def __init__(self, store: Any, *, namespace: str = "mediator.inbox") -> None:
        from mediator.eventsourcing import EventStore

        if not isinstance(store, EventStore):
            raise TypeError(f"StoreInbox needs an EventStore (open_store(url)), got {store!r}")
        self.store = store
        self.namespace = namespace

    async def seen(self, group: str, message_id: str) -> bool:
        async with self.store.transaction() as tx:
            return await tx.get(self.namespace, f"{group}:{message_id}") is not None

    async def record(self, group: str, message_id: str) -> None:
        async with self.store.transaction() as tx:
            await tx.put(self.namespace, f"{group}:{message_id}", time.time())

    @asynccontextmanager
    async def scope(self, group: str, message_id: str) -> AsyncIterator[InboxScope]:
        key = f"{group}:{message_id}"
        try:
            async with self.store.transaction() as tx:
                seen = await tx.get(self.namespace, key) is not None
                scope = InboxScope(seen, {"transaction": tx}, atomic=True)
                yield scope
                if not scope.succeeded:
                    raise _Rollback
                if not seen:
                    await tx.put(self.namespace, key, time.time())
        except _Rollback:
            pass


def __getattr__(name: str) -> Any:
    if name == "RedisInbox":
        from mediator.transport.redis import RedisInbox

        return RedisInbox
    raise AttributeError(f"module 'mediator.transport.inbox' has no attribute {name!r}")
