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
from typing import Any, Dict, Optional, Tuple

__all__ = ["Inbox", "MemoryInbox", "RedisInbox"]


class Inbox:
    """The interface a worker's inbox implements."""

    async def seen(self, group: str, message_id: str) -> bool:
        """Whether ``message_id`` was recorded for ``group``."""
        raise NotImplementedError

    async def record(self, group: str, message_id: str) -> None:
        """Record ``message_id`` as processed by ``group``."""
        raise NotImplementedError


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


def __getattr__(name: str) -> Any:
    if name == "RedisInbox":
        from mediator.transport.redis import RedisInbox

        return RedisInbox
    raise AttributeError(f"module 'mediator.transport.inbox' has no attribute {name!r}")
