"""``RecordedEvent``: an event as the store keeps it."""

from datetime import datetime
from typing import Any, Dict, NamedTuple

__all__ = ["RecordedEvent"]


class RecordedEvent(NamedTuple):
    """One stored event.

    ``stream``: the stream's name (an aggregate's id); ``version``: its place in the
    stream, from 1; ``position``: its place in the store's global order, from 1,
    increasing in commit order; ``id``: a unique id (a str uuid4); ``type``: the codec's
    type string (e.g. ``"bank.Deposited@2"``); ``event``: the decoded event object;
    ``metadata``: the JSON dict given to ``append`` (``{}`` when none); ``recorded_at``: the
    commit time as an aware UTC ``datetime``.
    """

    stream: str
    version: int
    position: int
    id: str
    type: str
    event: Any
    metadata: Dict[str, Any]
    recorded_at: datetime
