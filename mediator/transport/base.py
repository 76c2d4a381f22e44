"""The transport protocol: what every backend (memory, Redis Streams, JetStream) implements.

A transport has two faces.

**The public one** (users): ``publish`` / ``publish_encoded`` (durable once they return,
with a message id that is also the deduplication id), ``dead_letters(group)``,
``requeue(letter)``, ``open`` / ``close`` and ``async with``.

**The backend-facing one** (driven by ``mediator.transport.Worker``; users never call it).
A *group* is a named set of competing consumers: every group sees every message published
to the types it consumes (fan-out), and inside a group each message goes to one consumer
at a time. A *consumer* is one worker, named uniquely by the worker. The life of a
message inside a group:

1. ``ensure_group(group, types, start=..., claim_idle=...)`` once per worker start:
   creates the group if it does not exist (reading from the end of each type's stream for
   ``start="latest"``, from the first message it still holds for ``"earliest"``); an
   existing group keeps its position (``start`` only matters to the first worker).
2. ``fetch(group, consumer, max_messages, timeout)`` returns up to ``max_messages``
   ``Delivery`` objects, waiting at most ``timeout`` seconds for the first one; ``[]``
   when none came. Each returned delivery is *claimed* by ``consumer``: no other consumer
   of the group gets it while the claim holds. It returns, in this order: messages due
   for redelivery (a ``retry`` whose delay has elapsed; messages released by ``release``;
   messages whose claim expired, i.e. not extended for ``claim_idle`` seconds, because
   their consumer died), then new messages. ``delivery.deliveries`` counts how many
   times the message was handed to a consumer of this group, this time included (1 on
   the first delivery); a claim that expired counts as a delivery, a ``release`` does
   not.
3. Then exactly one of:
   - ``ack(deliveries)``: done; the group never sees these messages again.
   - ``retry(delivery, delay)``: failed; hand it out again (to any consumer of the group)
     no sooner than ``delay`` seconds from now, with ``deliveries`` one higher.
   - ``dead_letter(delivery, error=..., handler=..., reason=...)``: write it to the
     group's dead-letter store and *then* acknowledge it (atomically, or in that order:
     a crash in between must leave a duplicate dead letter, never a lost message).
   - ``release(deliveries)``: fetched but never started (graceful shutdown): give the
     claims up at once so another consumer fetches them without waiting ``claim_idle``;
     ``deliveries`` is not increased.
   - nothing (the consumer died): the claim expires ``claim_idle`` seconds after it
     was last taken or extended, and the message is handed out again.
4. While a handler runs longer than ``claim_idle``, the worker calls ``extend(deliveries)``
   about every ``claim_idle / 3`` seconds: it resets each claim's idle time, so that no
   other consumer reclaims a message whose handler is still running.

Per-handler progress: when some handlers of a message succeeded and another failed, the
worker calls ``mark_handlers_done(delivery, names)`` before ``retry``; on a redelivery
(``deliveries > 1``) it asks ``handlers_done(delivery)`` and skips those handlers. The
record is keyed by (group, message id), survives the worker, and may be dropped once the
message is acknowledged or dead-lettered.

Message ids: ``publish`` makes one (``new_message_id()``) unless given ``message_id=``;
it is stored with the message, comes back as ``Delivery.message_id`` and
``DeadLetter.message_id``, and is the broker's deduplication id where the broker has one
(JetStream ``Nats-Msg-Id``). The broker's own position id (a Redis stream entry id, a
JetStream sequence) stays inside ``Delivery.token``.

Type strings: a message's ``type`` is the codec's type string (``"bank.Deposited"`` or
``"bank.Deposited@2"``). Backends route on its *family*, ``type_family(type)``, the name
without ``@version``, so that every version of a type reaches the same consumers.

Errors: broker failures are retried with backoff inside the backend for about
``reconnect_timeout`` seconds (an option of every network backend, default 30), then
raised as ``TransportConnectionError``; a closed transport raises
``TransportClosedError``.
"""

import abc
import contextvars
import os
import re
from typing import Any, AsyncIterator, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from mediator.transport.errors import TransportClosedError

__all__ = [
    "Transport",
    "Delivery",
    "DeadLetter",
    "traceparent",
    "MESSAGE_ID_HEADER",
    "TRACEPARENT_HEADER",
    "START_LATEST",
    "START_EARLIEST",
    "new_message_id",
    "type_family",
]

#: The header a worker adds to each message's headers for its handlers: the message id.
MESSAGE_ID_HEADER = "message-id"
#: The W3C trace context header ``publish`` adds when ``traceparent`` is set.
TRACEPARENT_HEADER = "traceparent"

#: The W3C ``traceparent`` of the publisher's context (the observability work sets it);
#: ``publish`` copies it into the message's headers unless they already have one.
traceparent: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar(
    "mediator.transport.traceparent", default=None
)

START_LATEST = "latest"
START_EARLIEST = "earliest"
_STARTS = (START_LATEST, START_EARLIEST)

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


# Message ids come from os.urandom 256 at a time (one system call, not one per publish);
# list.pop is atomic, so threads never share one, and a forked child drops the parent's.
_ID_BATCH = 256
_ids: List[str] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.clear)


def new_message_id() -> str:
    """A fresh message id: 32 random hex digits (unique without coordination)."""
    try:
        return _ids.pop()
    except IndexError:
        data = os.urandom(16 * _ID_BATCH).hex()
        _ids.extend([data[i : i + 32] for i in range(32, len(data), 32)])
        return data[:32]


def type_family(type_string: str) -> str:
    """The type name without its ``@version``: ``"bank.Deposited@2"`` -> ``"bank.Deposited"``."""
    name, _, _ = type_string.partition("@")
    return name


def check_name(what: str, value: Any) -> str:
    """``value`` if it is a usable group/consumer name, else a ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} must be 1-200 characters of letters, digits, '_', '-' or '.' "
            f"(not starting with '.'), got {value!r}"
        )
    return value


def check_start(start: Any) -> str:
    if start not in _STARTS:
        raise ValueError(f"start must be 'latest' or 'earliest', got {start!r}")
    return start


class Delivery:
    """One message as fetched by one consumer of a group (what a worker handles).

    ``message_id``, ``type``, ``payload``, ``headers`` and ``key`` are as published;
    ``deliveries`` counts the deliveries to this group, this one included (1 first);
    ``token`` is the backend's own handle (a stream entry id, a JetStream message...).
    """

    __slots__ = ("group", "message_id", "type", "payload", "headers", "key", "deliveries", "token")

    def __init__(
        self,
        group: str,
        message_id: str,
        type: str,
        payload: bytes,
        headers: Dict[str, str],
        key: Optional[str],
        deliveries: int,
        token: Any,
    ) -> None:
        self.group = group
        self.message_id = message_id
        self.type = type
        self.payload = payload
        self.headers = headers
        self.key = key
        self.deliveries = deliveries
        self.token = token

    def __repr__(self) -> str:
        return (
            f"<Delivery {self.message_id} {self.type} to group {self.group!r}, "
            f"delivery {self.deliveries}>"
        )


class DeadLetter:
    """A message a group gave up on, as ``Transport.dead_letters(group)`` yields it.

    ``error`` is the exception's type and text (``"ValueError: bad amount"``) or the
    reason it was never handled (an unknown type, a payload that does not decode);
    ``handler`` is the qualified name of the failing handler (``None`` when no handler
    ran); ``deliveries`` how many times the group had it; ``token`` the backend's handle
    of the dead letter itself (for ``requeue``).
    """

    __slots__ = ("group", "message_id", "type", "payload", "headers", "key", "error", "handler", "deliveries", "token")

    def __init__(
        self,
        group: str,
        message_id: str,
        type: str,
        payload: bytes,
        headers: Dict[str, str],
        key: Optional[str],
        error: str,
        handler: Optional[str],
        deliveries: int,
        token: Any = None,
    ) -> None:
        self.group = group
        self.message_id = message_id
        self.type = type
        self.payload = payload
        self.headers = headers
        self.key = key
        self.error = error
        self.handler = handler
        self.deliveries = deliveries
        self.token = token

    def __repr__(self) -> str:
        return (
            f"<DeadLetter {self.message_id} {self.type} of group {self.group!r} after "
            f"{self.deliveries} deliveries: {self.error}" + (f" in {self.handler}>" if self.handler else ">")
        )


def _check_headers(headers: Optional[Mapping[str, str]]) -> Dict[str, str]:
    if headers is None:
        result: Dict[str, str] = {}
    elif not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {headers!r}")
    else:
        result = dict(headers)
        for name, value in result.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"headers must map str to str: {name!r}: {value!r} is not")
    trace = traceparent.get()
    if trace is not None and TRACEPARENT_HEADER not in result:
        result[TRACEPARENT_HEADER] = trace
    return result


class Transport(abc.ABC):
    """A broker connection: publish events, and the operations a ``Worker`` drives.

    Made by ``mediator.transport.connect(url)`` (or a backend class directly); it connects
    on ``open()``, on ``async with`` or on first use, and ``close()`` releases it.
    ``codec`` encodes published events (default: the process-wide ``mediator.codec.codec``).
    """

    #: The URL scheme(s) a backend serves (for messages).
    scheme = "?"

    def __init__(self, *, codec: Any = None) -> None:
        if codec is None:
            from mediator.codec import codec as default_codec

            codec = default_codec
        self.codec = codec
        self._closed = False

    # -- the public face ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    async def publish(
        self,
        event: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> str:
        """Publish ``event``; return once the broker holds it durably, with its message id.

        ``key`` (optional) travels with the message (``Delivery.key``); ``headers`` (str
        to str) too, plus ``traceparent`` when one is in the context. ``message_id``
        (default: a fresh one) is also the deduplication id: publishing again with the
        same id after a failure is safe where the broker or the worker's inbox dedups.
        """
        type_string, payload = self.codec.encode(event)
        return await self.publish_encoded(type_string, payload, key=key, headers=headers, message_id=message_id)

    async def publish_encoded(
        self,
        type: str,
        payload: bytes,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> str:
        """``publish`` for an event already encoded: its codec type string and payload bytes."""
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed: cannot publish a {type} message")
        if not isinstance(type, str) or not type:
            raise TypeError(f"the message type must be a non-empty str, got {type!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"the payload of a {type} message must be bytes, got {payload!r}")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, got {key!r}")
        if message_id is None:
            message_id = new_message_id()
        elif not isinstance(message_id, str) or not message_id:
            raise TypeError(f"message_id must be a non-empty str, got {message_id!r}")
        await self._send(type, bytes(payload), key, _check_headers(headers), message_id)
        return message_id

    async def publish_many(
        self,
        events: Iterable[Any],
        *,
        headers: Optional[Mapping[str, str]] = None,
    ) -> List[str]:
        """Publish several events at once (one round trip where the broker allows it).

        Returns their message ids, in order, once the broker holds every one durably.
        ``headers`` go with each. If it raises, some of the events may have been stored.
        """
        encode = self.codec.encode
        encoded = [encode(event) for event in events]
        return await self.publish_many_encoded(encoded, headers=headers)

    async def publish_many_encoded(
        self,
        messages: Sequence[Tuple[str, bytes]],
        *,
        headers: Optional[Mapping[str, str]] = None,
        message_ids: Optional[Sequence[str]] = None,
    ) -> List[str]:
        """``publish_many`` for encoded events: ``(type string, payload)`` pairs.

        ``message_ids``, if given, one per message (else fresh ones).
        """
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed: cannot publish")
        checked = _check_headers(headers)
        if message_ids is None:
            message_ids = [new_message_id() for _ in messages]
        elif len(message_ids) != len(messages):
            raise ValueError(f"{len(message_ids)} message ids for {len(messages)} messages")
        batch = []
        for (type, payload), message_id in zip(messages, message_ids):
            if not isinstance(type, str) or not type:
                raise TypeError(f"the message type must be a non-empty str, got {type!r}")
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"the payload of a {type} message must be bytes, got {payload!r}")
            if not isinstance(message_id, str) or not message_id:
                raise TypeError(f"message ids must be non-empty strs, got {message_id!r}")
            batch.append((type, bytes(payload), None, checked, message_id))
        if batch:
            await self._send_many(batch)
        return list(message_ids)

    async def _send_many(self, batch: Sequence[Tuple[str, bytes, Optional[str], Dict[str, str], str]]) -> None:
        """Store each ``(type, payload, key, headers, message_id)`` (default: concurrent ``_send``)."""
        import asyncio

        await asyncio.gather(*(self._send(*message) for message in batch))

    @abc.abstractmethod
    def dead_letters(self, group: str) -> AsyncIterator[DeadLetter]:
        """The group's dead letters as they stand now, oldest first (ends after the last)."""

    @abc.abstractmethod
    async def requeue(self, letter: DeadLetter) -> None:
        """Send a dead letter back to its group (only that group), as a new first delivery.

        It is removed from the dead letters; the message id stays the same.
        """

    async def open(self) -> "Transport":
        """Connect (idempotent); returns the transport."""
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")
        await self._open()
        return self

    async def close(self) -> None:
        """Release the connection (idempotent). Workers using it must be closed first."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> "Transport":
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- what a backend implements -------------------------------------------------------

    async def _open(self) -> None:
        """Connect to the broker; called by ``open`` (may be called again: be idempotent)."""

    async def _close(self) -> None:
        """Disconnect; called once by ``close``."""

    @abc.abstractmethod
    async def _send(self, type: str, payload: bytes, key: Optional[str], headers: Dict[str, str], message_id: str) -> None:
        """Store one message durably on the stream of ``type_family(type)``; return once stored.

        Arguments are checked already; ``headers`` may be empty. Retry connection failures
        (with backoff, up to ``reconnect_timeout``); raise ``PublishError`` or
        ``TransportConnectionError`` if the broker never confirmed.
        """

    # -- the backend-facing face (driven by Worker) ------------------------------------------

    @abc.abstractmethod
    async def ensure_group(self, group: str, types: Sequence[str], *, start: str, claim_idle: float) -> None:
        """Create ``group`` over the streams of ``types`` (type strings or families) if needed.

        ``start`` is ``"latest"`` (the group sees what is published from now on) or
        ``"earliest"`` (everything the streams still hold); an existing group keeps its
        position. ``claim_idle`` (seconds) is how long a claim lasts unextended before the
        message goes to another consumer. Called again by each new worker of the group, with
        possibly more types: those are added. The group also receives its requeued
        dead letters.
        """

    @abc.abstractmethod
    async def fetch(self, group: str, consumer: str, max_messages: int, timeout: float) -> List[Delivery]:
        """Claim up to ``max_messages`` messages for ``consumer``; wait up to ``timeout`` s.

        (A backend reading several streams in one request may return up to
        ``max_messages`` from each: the worker buffers them, and extends their claims.)

        Redeliveries that are due come first (see the module docstring), then new messages.
        Returns ``[]`` if nothing came within ``timeout``. Must return promptly (within
        ``timeout``) when the transport is closed, with ``[]`` or ``TransportClosedError``.
        """

    @abc.abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge: these messages are done for their group (they may be in one batch)."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, delay: float) -> None:
        """Hand the message out again, to any consumer of its group, after ``delay`` seconds."""

    @abc.abstractmethod
    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give up the claims now (never started): others fetch them at once, same count."""

    @abc.abstractmethod
    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of these claims (their handlers are still running)."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, *, error: str, handler: Optional[str]) -> None:
        """Write the message to its group's dead letters with ``error`` and ``handler``, then ack it.

        ``error``: the exception's ``"Type: text"`` or the reason (unknown type, undecodable
        payload, no handler); ``handler``: the failing handler's qualified name, or None.
        The dead letter's ``deliveries`` is ``delivery.deliveries``.
        """

    @abc.abstractmethod
    async def handlers_done(self, delivery: Delivery) -> FrozenSet[str]:
        """The handler names recorded by ``mark_handlers_done`` for this message in its group."""

    @abc.abstractmethod
    async def mark_handlers_done(self, delivery: Delivery, names: Sequence[str]) -> None:
        """Record that these handlers of the message succeeded (kept until it is acked)."""

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__}{' closed' if self._closed else ''}>"
