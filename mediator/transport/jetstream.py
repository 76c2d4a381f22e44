"""The NATS JetStream transport (``nats://`` and ``tls://`` URLs; needs the ``nats`` extra).

Layout on the server, for a ``prefix`` (default ``"mediator"``):

* one stream ``{prefix}_events``, file storage, deduplicated on ``Nats-Msg-Id`` = the
  message id within ``duplicate_window`` seconds, at most ``maxlen`` messages per subject
  (the oldest are dropped), over the subjects
  - ``{prefix}.e.<family>.<version>``: the events, by codec type string (``"bank.Deposited"``
    is ``<family>``, ``n`` its version token; ``"bank.Deposited@2"`` has ``v2``), each part
    escaped into one subject token (``[A-Za-z0-9-]`` kept, any other byte ``_XX``);
  - ``{prefix}.r.<group>``: dead letters requeued to one group;
* per group, one durable pull consumer per event type family the group's workers consume
  (``<group>__<family>``, on ``{prefix}.e.<family>.*``), created with deliver policy
  ``new`` (``start="latest"``) or ``all`` (``"earliest"``), and one for its requeued
  messages (``<group>___rq``): explicit acks, ``ack_wait`` = the worker's ``claim_idle``,
  unlimited deliveries (the worker counts them and dead-letters). As on Redis (a stream
  per family), a group only ever receives the families its workers asked for, and a family
  added later starts where ``start`` says;
* one stream ``{prefix}_dead`` for the dead letters, a subject ``{prefix}.dead.<group>``
  per group, never trimmed;
* one key-value bucket ``{prefix}_marks`` keyed by (group, message id): the handlers that
  already succeeded for a message that is being retried, and how many times it was
  released at shutdown (a release is a JetStream nak, which JetStream counts as a
  delivery; the contract does not).

A message's type travels in its subject (in ``Mediator-Type`` for a requeued one), its id
in ``Nats-Msg-Id`` (in ``Mediator-Id`` for a requeued one, whose ``Nats-Msg-Id`` must
differ to pass the deduplication), its key and headers (when it has them) in the
``Mediator-Key`` / ``Mediator-Headers`` headers as JSON.

Claims are JetStream's: a fetched message belongs to its consumer until acked, nakked
(``retry``: nak with the delay; ``release``: nak now) or until ``ack_wait`` passes without
an ack or an in-progress (``extend``: ``+WPI``), when JetStream delivers it again.
``fetch`` sends its own pull requests and collects the messages in a buffer per group
(fed by one subscription callback per consumer); messages waiting there are kept claimed
by ``extend`` as well. Connection losses are survived: nats-py reconnects for ever;
publishes and API calls are retried with backoff for ``reconnect_timeout`` seconds,
publishes with the same ``Nats-Msg-Id``, so a retry after a lost PubAck stores nothing
twice; pull requests lost with a connection are sent again when they expire.

Needs nats-server 2.9 or later (it uses one filter subject per consumer, not 2.10's
several).
"""

import asyncio
import collections
import json
import logging
import hashlib
import re
import time
from urllib.parse import parse_qs, urlsplit, urlunsplit
from typing import Any, AsyncIterator, Awaitable, Callable, Deque, Dict, FrozenSet, List, Optional, Sequence, Set, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from mediator.transport.base import (
    START_EARLIEST,
    DeadLetter,
    Delivery,
    Transport,
    check_name,
    check_start,
    type_family,
)
from mediator.transport.errors import (
    ConsumerGroupError,
    PublishError,
    TransportClosedError,
    TransportConnectionError,
    UnsupportedURLError,
)

__all__ = ["JetStreamTransport"]

log = logging.getLogger("mediator.transport.jetstream")

T = TypeVar("T")

_KEY_HEADER = "Mediator-Key"
_HEADERS_HEADER = "Mediator-Headers"
_TYPE_HEADER = "Mediator-Type"
_ID_HEADER = "Mediator-Id"
_DEAD_HEADER = "Mediator-Dead"
_MSG_ID = "Nats-Msg-Id"

_SAFE = re.compile(r"[A-Za-z0-9-]")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MESSAGE_ID = re.compile(r"^[!-~]{1,512}$")

#: Errors after which a request is worth sending again (the server restarts, a leader moves).
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    ConnectionError,
)

_ACK = b""
_NAK = b"-NAK"
_PROGRESS = b"+WPI"


def _token(text: str) -> str:
    """``text`` as one subject / consumer / key token: ``[A-Za-z0-9-]`` kept, the rest ``_XX``."""
    if text.isascii() and text.replace("-", "").isalnum():
        return text
    return "".join(c if _SAFE.match(c) else "".join(f"_{b:02X}" for b in c.encode()) for c in text)


def _untoken(token: str) -> str:
    """The text ``_token`` escaped (``ValueError`` if ``token`` is not one)."""
    if "_" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out += bytes.fromhex(token[i + 1 : i + 3])
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def _ack_numbers(reply: str) -> "tuple[int, int]":
    """(deliveries, stream sequence) from a JetStream ack subject (v1 and v2 forms)."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[4]), int(tokens[5])
    # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[6]), int(tokens[7])


def _split_url(url: str) -> "tuple[str, Dict[str, str]]":
    """The server URL without its query, and the query's options (``?prefix=...&maxlen=...``)."""
    if not isinstance(url, str):
        raise UnsupportedURLError(f"a NATS URL must be a str, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("nats", "tls"):
        raise UnsupportedURLError(f"JetStreamTransport takes a nats:// or tls:// URL, got {url!r}")
    options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), options


class _Token:
    """``Delivery.token``: the JetStream message, its delivery count as JetStream counts it
    (releases included), its stream sequence, and its marks once read (``None`` before)."""

    __slots__ = ("msg", "raw", "sequence", "marks")

    def __init__(self, msg: Any, raw: int, sequence: int) -> None:
        self.msg = msg
        self.raw = raw
        self.sequence = sequence
        self.marks: Optional[Dict[str, Any]] = None


class _Replies:
    """The PubAcks of pipelined publishes: one wildcard inbox subscription, a future per token."""

    __slots__ = ("prefix", "futures", "counter", "sub")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "<inbox>."
        self.futures: Dict[str, asyncio.Future] = {}
        self.counter = 0
        self.sub: Any = None

    def expect(self) -> "tuple[str, asyncio.Future]":
        self.counter += 1
        token = str(self.counter)
        future = self.futures[token] = asyncio.get_running_loop().create_future()
        return self.prefix + token, future

    async def on_reply(self, msg: Any) -> None:
        future = self.futures.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)


class _Group:
    """What ``fetch`` keeps for one group: its consumers' pullers and one buffer they feed."""

    __slots__ = ("name", "pullers", "buffer", "waiters", "refused")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pullers: Dict[str, "_Puller"] = {}  # consumer name -> puller
        self.buffer: Deque[Any] = collections.deque()
        self.waiters: List[asyncio.Future] = []  # the fetches waiting (workers may share a transport)
        self.refused: Optional[str] = None  # why the server refused a pull request (409, 503)

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Puller:
    """The pull requests of one consumer: their answers go to the group's buffer."""

    __slots__ = ("group", "consumer", "subject", "inbox", "sub", "requeue", "outstanding", "deadline", "answered")

    def __init__(self, group: _Group, consumer: str, subject: str, inbox: str, requeue: bool) -> None:
        self.group = group
        self.consumer = consumer
        self.subject = subject  # $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
        self.inbox = inbox
        self.sub: Any = None
        self.requeue = requeue
        self.outstanding = 0  # messages requested and not yet received
        self.deadline = 0.0  # when the open pull request expires (monotonic)
        self.answered = True  # whether the server said anything since the last pull request

    async def on_message(self, msg: Any) -> None:
        self.answered = True
        group = self.group
        if msg.reply:
            group.buffer.append(msg)
            self.outstanding -= 1
        else:  # a status: 404/408 the request ended, 409/503 refused, 100 a heartbeat
            headers = msg.headers or {}
            status = headers.get("Status")
            if status != "100":
                self.outstanding = 0
            if status not in ("100", "404", "408"):
                description = headers.get("Description") or ""
                group.refused = f"{status} {description} (consumer {self.consumer})"
        group.wake()


class JetStreamTransport(Transport):
    """Events on NATS JetStream (see the module docstring for the layout).

    ``JetStreamTransport("nats://127.0.0.1:4222", prefix="mediator", maxlen=1_000_000,
    duplicate_window=120.0, reconnect_timeout=30.0, request_timeout=2.0)``: ``maxlen`` is
    the most messages kept per type (per subject), ``duplicate_window`` how long (s) a
    message id deduplicates, ``reconnect_timeout`` how long (s) a publish or an API call
    is retried across a lost connection before ``TransportConnectionError``.
    """

    scheme = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        codec: Any = None,
        prefix: str = "mediator",
        maxlen: Optional[int] = 1_000_000,
        duplicate_window: float = 120.0,
        reconnect_timeout: float = 30.0,
        request_timeout: float = 2.0,
        marks_ttl: float = 7 * 24 * 3600.0,
    ) -> None:
        super().__init__(codec=codec)
        url, options = _split_url(url)
        prefix = options.pop("prefix", prefix)
        if "maxlen" in options:
            text = options.pop("maxlen")
            maxlen = None if text.lower() in ("", "none") else int(text)
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} in the NATS URL (known: prefix, maxlen)")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(f"prefix must be 1-64 letters, digits, '_' or '-', got {prefix!r}")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0):
            raise ValueError(f"maxlen must be an int >= 0 (0: no limit) or None, got {maxlen!r}")
        if maxlen == 0:
            maxlen = None
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.duplicate_window = float(duplicate_window)
        self.reconnect_timeout = float(reconnect_timeout)
        self.request_timeout = float(request_timeout)
        self.marks_ttl = float(marks_ttl)
        self.stream = f"{prefix}_events"
        self.dead_stream = f"{prefix}_dead"
        self.marks_bucket = f"{prefix}_marks"
        self._requeued = f"{prefix}.r."
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._opening: Optional[asyncio.Future] = None
        self._subjects: Dict[str, str] = {}  # type string -> subject
        self._types: Dict[str, str] = {}  # subject -> type string
        self._groups: Dict[str, _Group] = {}
        self._replies: Optional[_Replies] = None

    def __repr__(self) -> str:
        return f"<JetStreamTransport {self.url} prefix={self.prefix!r}{' closed' if self._closed else ''}>"

    # -- connection ------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._js is not None:
            return
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            if self._opening.done():
                self._opening = None
            raise

    async def _connect(self) -> None:
        wait = 0.25

        async def error_cb(error: Exception) -> None:
            log.debug("%r: %s", self, error)

        try:
            nc = await nats.connect(
                servers=[self.url],
                allow_reconnect=True,
                reconnect_time_wait=wait,
                max_reconnect_attempts=max(1, int(self.reconnect_timeout / wait)),
                connect_timeout=min(2.0, self.reconnect_timeout),
                error_cb=error_cb,
                name=f"mediator {self.prefix}",
            )
        except Exception as error:
            raise TransportConnectionError(f"{self!r}: cannot connect to NATS at {self.url}: {error!r}") from error
        nc.options["max_reconnect_attempts"] = -1  # connected once: reconnect for ever
        js = nc.jetstream(timeout=self.request_timeout)
        try:
            await self._retrying("create the streams", lambda: self._declare(js))
            self._kv = await self._retrying("create the marks bucket", lambda: self._declare_marks(js))
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def _declare(self, js: Any) -> None:
        await self._add_stream(
            js,
            StreamConfig(
                name=self.stream,
                subjects=[f"{self.prefix}.e.>", f"{self.prefix}.r.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=self.maxlen if self.maxlen is not None else -1,
                duplicate_window=self.duplicate_window,
            ),
        )
        await self._add_stream(
            js,
            StreamConfig(
                name=self.dead_stream,
                subjects=[f"{self.prefix}.dead.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window,
            ),
        )

    async def _add_stream(self, js: Any, config: StreamConfig) -> None:
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as error:
                if "already in use" not in str(error):  # made meanwhile by another process
                    raise ConsumerGroupError(f"{self!r}: cannot create the stream {config.name}: {error}") from error

    async def _declare_marks(self, js: Any) -> Any:
        try:
            return await js.key_value(self.marks_bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(bucket=self.marks_bucket, history=1, ttl=self.marks_ttl)

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        groups, self._groups = list(self._groups.values()), {}
        replies, self._replies = self._replies, None
        if replies is not None:
            for future in replies.futures.values():
                future.cancel()
        if nc is None:
            if self._opening is not None:
                self._opening.cancel()
            return
        for group in groups:
            group.wake()
            for puller in group.pullers.values():
                try:
                    await puller.sub.unsubscribe()  # nothing more comes into the buffer
                except Exception:
                    pass
            for msg in group.buffer:  # fetched from the server, never handed out: give back
                try:
                    await nc.publish(msg.reply, _NAK)
                except Exception:
                    break
            group.buffer.clear()
        try:  # the last acks, naks and progress reports out before the connection goes
            await nc.flush(timeout=2)
        except Exception:
            pass
        await nc.close()

    def _client(self) -> Any:
        nc = self._nc
        if nc is None or self._closed:
            raise TransportClosedError(f"{self!r} is closed" if self._closed else f"{self!r} is not open")
        return nc

    async def _ensure_open(self) -> Any:
        if self._nc is None and not self._closed:
            await self.open()
        return self._client()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again with backoff while the server is unreachable, for ``reconnect_timeout``."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while True:
            if self._closed:
                raise TransportClosedError(f"{self!r} is closed: cannot {what}")
            try:
                return await call()
            except nats.errors.ConnectionClosedError as error:
                raise TransportClosedError(f"{self!r} is closed: cannot {what}") from error
            except _TRANSIENT as error:
                if time.monotonic() + delay > deadline:
                    raise TransportConnectionError(
                        f"{self!r}: could not {what} within {self.reconnect_timeout:g} s: {error!r}"
                    ) from error
                log.debug("%r: %s failed (%r), retrying in %.2f s", self, what, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- publishing -------------------------------------------------------------------------

    def _subject(self, type: str) -> str:
        subject = self._subjects.get(type)
        if subject is None:
            family, at, version = type.partition("@")
            if not family:
                raise ValueError(f"a type string needs a name before its '@version', got {type!r}")
            subject = f"{self.prefix}.e.{_token(family)}.{'v' + _token(version) if at else 'n'}"
            if len(self._subjects) < 10_000:
                self._subjects[type] = subject
                self._types[subject] = type
        return subject

    def _type_of(self, subject: str) -> str:
        type = self._types.get(subject)
        if type is None:
            parts = subject.split(".")
            if len(parts) != 4 or parts[1] != "e" or not (parts[3] == "n" or parts[3].startswith("v")):
                raise ValueError("not a subject of the form PREFIX.e.FAMILY.n or PREFIX.e.FAMILY.vVERSION")
            family = _untoken(parts[2])
            type = family if parts[3] == "n" else f"{family}@{_untoken(parts[3][1:])}"
            if len(self._types) < 10_000:
                self._types[subject] = type
                self._subjects[type] = subject
        return type

    async def _store(self, what: str, subject: str, payload: bytes, headers: Dict[str, str]) -> None:
        """Publish to a stream and wait for its PubAck (retried with the same Nats-Msg-Id)."""
        nc = self._nc
        if nc is None or self._closed:
            nc = await self._ensure_open()
        timeout = self.request_timeout

        async def send() -> Any:
            return await nc.request(subject, payload, timeout=timeout, headers=headers)

        try:  # the common case without the retry loop's frames
            reply = await send()
        except nats.errors.ConnectionClosedError as error:
            raise TransportClosedError(f"{self!r} is closed: cannot {what}") from error
        except _TRANSIENT:
            reply = await self._retrying(what, send)
        data = reply.data
        if b'"error"' in data:  # a PubAck is {"stream": ..., "seq": ...}; an error says so
            refusal = json.loads(data).get("error")
            if refusal is not None:
                raise PublishError(f"{self!r}: JetStream refused to {what}: {refusal.get('description', refusal)}")

    def _message(self, type: str, key: Optional[str], headers: Dict[str, str], message_id: str) -> "tuple[str, Dict[str, str]]":
        """The subject and the NATS headers of a message to publish."""
        if not _MESSAGE_ID.match(message_id):
            raise ValueError(
                f"a JetStream message id must be 1-512 printable ASCII characters without spaces, got {message_id!r}"
            )
        nats_headers = {_MSG_ID: message_id}
        if key is not None:
            nats_headers[_KEY_HEADER] = json.dumps(key)
        if headers:
            nats_headers[_HEADERS_HEADER] = json.dumps(headers)
        return self._subject(type), nats_headers

    async def _send(self, type: str, payload: bytes, key: Optional[str], headers: Dict[str, str], message_id: str) -> None:
        subject, nats_headers = self._message(type, key, headers, message_id)
        await self._store(f"publish a {type} message", subject, payload, nats_headers)

    async def _send_many(self, batch: Sequence["tuple[str, bytes, Optional[str], Dict[str, str], str]"]) -> None:
        """Publish the whole batch at once, then collect the PubAcks; resend what got none.

        Each message is resent alone (same ``Nats-Msg-Id``, so never stored twice) when its
        PubAck does not come within ``request_timeout`` or the stream could not take it.
        """
        messages = [(type, payload, *self._message(type, key, headers, message_id)) for type, payload, key, headers, message_id in batch]
        nc = self._nc
        if nc is None or self._closed:
            nc = await self._ensure_open()
        replies = self._replies
        if replies is None:
            replies = _Replies(nc.new_inbox() + ".")
            replies.sub = await nc.subscribe(replies.prefix + "*", cb=replies.on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1)
            self._replies = replies
        sent: List["tuple[asyncio.Future, int]"] = []
        try:
            for index, (_, payload, subject, nats_headers) in enumerate(messages):
                reply, future = replies.expect()
                sent.append((future, index))
                await nc.publish(subject, payload, reply=reply, headers=nats_headers)
        except nats.errors.ConnectionClosedError as error:
            raise TransportClosedError(f"{self!r} is closed: cannot publish") from error
        except _TRANSIENT:
            pass  # what was not sent gets no PubAck: resent below
        if sent:
            await asyncio.wait([future for future, _ in sent], timeout=self.request_timeout)
        again: List[int] = list(range(len(sent), len(messages)))
        for future, index in sent:
            if future.cancelled() or not future.done():
                future.cancel()
                again.append(index)
                continue
            data = future.result().data
            if not data:  # a status instead of a PubAck (503: no stream yet, restarting)
                again.append(index)
            elif b'"error"' in data:
                refusal = json.loads(data).get("error")
                if refusal is not None:
                    type = messages[index][0]
                    raise PublishError(f"{self!r}: JetStream refused to publish a {type} message: {refusal.get('description', refusal)}")
        for token in [token for token, future in replies.futures.items() if future.cancelled()]:
            del replies.futures[token]
        if again:
            await asyncio.gather(
                *(self._store(f"publish a {messages[i][0]} message", messages[i][2], messages[i][1], messages[i][3]) for i in sorted(again))
            )

    # -- groups -----------------------------------------------------------------------------

    def _consumer_name(self, group: str, family: Optional[str]) -> str:
        """``<group>__<family>``, or ``<group>___rq`` for the requeued (no token has ``__``)."""
        name = f"{_token(group)}__{_token(family)}" if family is not None else f"{_token(group)}___rq"
        if len(name) > 200:  # a consumer is a directory of the server's store
            name = "h" + hashlib.sha256(name.encode()).hexdigest()[:48]
        return name

    async def ensure_group(self, group: str, types: Sequence[str], *, start: str, claim_idle: float) -> None:
        check_name("group", group)
        check_start(start)
        if not claim_idle > 0:
            raise ValueError(f"claim_idle must be a positive number of seconds, got {claim_idle!r}")
        await self._ensure_open()
        js = self._js
        policy = DeliverPolicy.ALL if start == START_EARLIEST else DeliverPolicy.NEW
        wanted: List[Any] = [(None, f"{self.prefix}.r.{_token(group)}", DeliverPolicy.ALL)]
        for family in sorted({type_family(t) for t in types}):
            if not family:
                raise ValueError(f"a type string needs a name before its '@version', got one of {list(types)!r}")
            wanted.append((family, f"{self.prefix}.e.{_token(family)}.*", policy))
        state = self._groups.get(group) or _Group(group)
        for family, subject, deliver in wanted:
            name = self._consumer_name(group, family)
            config = ConsumerConfig(
                durable_name=name,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=float(claim_idle),
                deliver_policy=deliver,
                filter_subject=subject,
                max_deliver=-1,
                max_ack_pending=-1,
            )

            async def declare(config: ConsumerConfig = config) -> None:
                try:
                    info = await js.consumer_info(self.stream, config.durable_name)
                except nats.js.errors.NotFoundError:
                    await js.add_consumer(self.stream, config)
                    return
                if info.config.ack_wait != config.ack_wait:  # the newest worker's claim_idle rules
                    config.deliver_policy = info.config.deliver_policy
                    await js.add_consumer(self.stream, config)

            try:
                await self._retrying(f"create the consumer group {group!r}", declare)
            except nats.js.errors.APIError as error:
                raise ConsumerGroupError(f"{self!r}: cannot create the consumer group {group!r}: {error}") from error
            await self._puller(state, name, family is None)
        self._groups[group] = state

    async def _puller(self, group: _Group, consumer: str, requeue: bool) -> None:
        if consumer not in group.pullers:
            nc = self._client()
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{consumer}"
            puller = _Puller(group, consumer, subject, nc.new_inbox(), requeue)
            puller.sub = await nc.subscribe(puller.inbox, cb=puller.on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
            group.pullers[consumer] = puller

    async def _group(self, group: str) -> _Group:
        """The group's state; a group this transport did not create is looked up on the server."""
        state = self._groups.get(group)
        if state is not None:
            return state
        check_name("group", group)
        js = self._js
        names = await self._retrying(f"find the consumer group {group!r}", lambda: self._consumers_of(js, group))
        if not names:
            raise ConsumerGroupError(
                f"{self!r}: the server has no consumer group {group!r} on the stream {self.stream} (a worker creates it)"
            )
        state = self._groups.get(group) or _Group(group)
        for name in names:
            await self._puller(state, name, name.endswith("___rq"))
        self._groups[group] = state
        return state

    async def _consumers_of(self, js: Any, group: str) -> List[str]:
        head = f"{_token(group)}__"
        infos = await js.consumers_info(self.stream)
        return sorted(info.name for info in infos if info.name.startswith(head))

    async def fetch(self, group: str, consumer: str, max_messages: int, timeout: float) -> List[Delivery]:
        nc = await self._ensure_open()
        state = await self._group(group)
        buffer = state.buffer
        deadline = time.monotonic() + timeout
        while True:
            if not buffer:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0 or self._closed:
                    return []
                pullers = state.pullers.values()
                families = sum(1 for puller in pullers if not puller.requeue) or 1
                for puller in pullers:
                    if puller.outstanding > 0 and now < puller.deadline:
                        continue
                    if not puller.answered:  # not even a 408 when it expired: is the consumer there?
                        await self._check_consumer(group, puller)
                    batch = min(10, max_messages) if puller.requeue else max(1, max_messages // families)
                    expires = max(remaining, 0.05)
                    request = b'{"batch": %d, "expires": %d}' % (batch, int(expires * 1e9))
                    try:
                        await nc.publish(puller.subject, request, reply=puller.inbox)
                    except nats.errors.ConnectionClosedError as error:
                        raise TransportClosedError(f"{self!r} is closed") from error
                    except _TRANSIENT:
                        continue  # sent again at the next turn
                    puller.outstanding = batch
                    puller.deadline = now + expires + 0.05
                    puller.answered = False
                wait = min(remaining, max(min(puller.deadline for puller in pullers) - now, 0.01))
                waiter = asyncio.get_running_loop().create_future()
                state.waiters.append(waiter)
                try:
                    await asyncio.wait_for(waiter, wait)
                except asyncio.TimeoutError:
                    pass
                finally:
                    state.waiters.remove(waiter)
                if self._closed:
                    return []
                if state.refused is not None and not buffer:
                    reason, state.refused = state.refused, None
                    raise ConsumerGroupError(f"{self!r}: JetStream refused to deliver to the group {group!r}: {reason}")
                if not buffer:
                    continue
                if len(buffer) < max_messages and any(puller.outstanding > 0 for puller in pullers):
                    await asyncio.sleep(0)  # the rest of a batch is likely in the same read
            deliveries: List[Delivery] = []
            redelivered: List[Delivery] = []
            while buffer and len(deliveries) < max_messages:
                msg = buffer.popleft()
                try:
                    delivery = self._delivery(group, msg)
                except Exception as error:  # not a message this library published
                    await self._dead_letter_foreign(group, msg, error)
                    continue
                deliveries.append(delivery)
                if delivery.deliveries > 1:
                    redelivered.append(delivery)
            if redelivered:
                await self._subtract_releases(redelivered)
            if deliveries:
                return deliveries

    async def _check_consumer(self, group: str, puller: _Puller) -> None:
        """``ConsumerGroupError`` if the server does not have ``puller``'s consumer (any more)."""
        try:
            await self._js.consumer_info(self.stream, puller.consumer)
        except nats.js.errors.NotFoundError as error:
            raise ConsumerGroupError(
                f"{self!r}: the server has no consumer {puller.consumer} of the group {group!r} on the "
                f"stream {self.stream} (a worker creates it; was it deleted?)"
            ) from error
        except Exception:  # unreachable now: the next pull request tells
            pass

    def _delivery(self, group: str, msg: Any) -> Delivery:
        headers = msg.headers or {}
        subject = msg.subject
        type = self._types.get(subject)
        if type is None:
            type = headers[_TYPE_HEADER] if subject.startswith(self._requeued) else self._type_of(subject)
        deliveries, sequence = _ack_numbers(msg.reply)
        key = headers.get(_KEY_HEADER)
        user_headers = headers.get(_HEADERS_HEADER)
        return Delivery(
            group,
            headers.get(_ID_HEADER) or headers.get(_MSG_ID) or f"{self.stream}:{sequence}",
            type,
            msg.data,
            json.loads(user_headers) if user_headers is not None else {},
            json.loads(key) if key is not None else None,
            deliveries,
            _Token(msg, deliveries, sequence),
        )

    async def _dead_letter_foreign(self, group: str, msg: Any, error: Exception) -> None:
        """A message whose subject or headers this library cannot read: straight to the dead letters."""
        deliveries, sequence = _ack_numbers(msg.reply)
        headers = msg.headers or {}
        delivery = Delivery(
            group,
            headers.get(_MSG_ID) or f"{self.stream}:{sequence}",
            msg.subject.rpartition(".")[2],
            msg.data,
            {},
            None,
            deliveries,
            _Token(msg, deliveries, sequence),
        )
        reason = f"unreadable message on {msg.subject!r}: {type(error).__qualname__}: {error}"
        log.error("%r: %s: dead-lettered", self, reason)
        await self.dead_letter(delivery, error=reason, handler=None)

    # -- acknowledgements -------------------------------------------------------------------

    async def _reply(self, deliveries: Sequence[Delivery], payload: bytes) -> None:
        nc = self._client()
        try:
            for delivery in deliveries:
                await nc.publish(delivery.token.msg.reply, payload)
        except nats.errors.ConnectionClosedError as error:
            raise TransportClosedError(f"{self!r} is closed") from error
        except _TRANSIENT as error:
            # The claim is JetStream's: an ack that never arrives means a redelivery after
            # ack_wait (at least once), a lost nak or progress likewise.
            log.warning("%r: could not reach NATS to answer %d message(s): %r", self, len(deliveries), error)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._reply(deliveries, _ACK)
        for delivery in deliveries:
            if delivery.token.raw > 1:
                await self._forget_marks(delivery)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        payload = _NAK if delay <= 0 else _NAK + b' {"delay": %d}' % int(delay * 1e9)
        await self._reply([delivery], payload)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self._update_marks(delivery, released=1)
        await self._reply(deliveries, _NAK)

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        await self._reply(deliveries, _PROGRESS)
        nc = self._nc
        for name in {delivery.group for delivery in deliveries}:
            state = self._groups.get(name)
            if state is not None and nc is not None:
                for msg in list(state.buffer):  # fetched, not handed out yet: keep them too
                    try:
                        await nc.publish(msg.reply, _PROGRESS)
                    except Exception:
                        break

    async def dead_letter(self, delivery: Delivery, *, error: str, handler: Optional[str]) -> None:
        sequence = delivery.token.sequence
        record = {
            "id": delivery.message_id,
            "type": delivery.type,
            "key": delivery.key,
            "headers": delivery.headers,
            "error": error,
            "handler": handler,
            "deliveries": delivery.deliveries,
        }
        headers = {_MSG_ID: f"{_token(delivery.group)}.{sequence}", _DEAD_HEADER: json.dumps(record)}
        subject = f"{self.prefix}.dead.{_token(delivery.group)}"
        await self._store(f"dead-letter the {delivery.type} message {delivery.message_id}", subject, delivery.payload, headers)
        await self.ack([delivery])

    # -- per-handler progress and release counts (the marks bucket) --------------------------

    def _mark_key(self, delivery: Delivery) -> str:
        return f"{_token(delivery.group)}.{_token(delivery.message_id)}"

    async def _read_marks(self, delivery: Delivery) -> Dict[str, Any]:
        token = delivery.token
        if token.marks is not None:  # read by this fetch already
            return token.marks
        token.marks = marks = await self._read_stored_marks(delivery)
        return marks

    async def _read_stored_marks(self, delivery: Delivery) -> Dict[str, Any]:
        kv = self._kv
        key = self._mark_key(delivery)

        async def get() -> Optional[Any]:
            try:
                return await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None

        entry = await self._retrying(f"read the progress of {delivery.message_id}", get)
        if entry is None or not entry.value:
            return {}
        return json.loads(entry.value)

    async def _update_marks(self, delivery: Delivery, *, done: Sequence[str] = (), released: int = 0) -> None:
        await self._ensure_open()
        marks = await self._read_marks(delivery)
        if done:
            marks["done"] = sorted(set(marks.get("done", ())) | set(done))
        if released:
            marks["released"] = marks.get("released", 0) + released
        delivery.token.marks = marks
        value = json.dumps(marks).encode()
        kv = self._kv
        key = self._mark_key(delivery)
        await self._retrying(f"record the progress of {delivery.message_id}", lambda: kv.put(key, value))

    async def _forget_marks(self, delivery: Delivery) -> None:
        kv = self._kv
        key = self._mark_key(delivery)
        try:
            await self._retrying(f"drop the progress of {delivery.message_id}", lambda: kv.purge(key))
        except TransportConnectionError as error:  # the bucket's ttl drops it eventually
            log.warning("%s", error)

    async def _subtract_releases(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            released = (await self._read_marks(delivery)).get("released", 0)
            if released:
                delivery.deliveries = max(1, delivery.deliveries - released)

    async def handlers_done(self, delivery: Delivery) -> FrozenSet[str]:
        await self._ensure_open()
        return frozenset((await self._read_marks(delivery)).get("done", ()))

    async def mark_handlers_done(self, delivery: Delivery, names: Sequence[str]) -> None:
        if names:
            await self._update_marks(delivery, done=names)

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, group: str) -> AsyncIterator[DeadLetter]:
        check_name("group", group)
        await self._ensure_open()
        js = self._js
        subject = f"{self.prefix}.dead.{_token(group)}"
        sequence = 1
        while True:

            async def get_next(sequence: int = sequence) -> Optional[Any]:
                try:
                    return await js.get_msg(self.dead_stream, seq=sequence, next=True, subject=subject)
                except nats.js.errors.NotFoundError:
                    return None

            raw = await self._retrying(f"read the dead letters of {group!r}", get_next)
            if raw is None:
                return
            record = json.loads(raw.headers[_DEAD_HEADER])
            yield DeadLetter(
                group,
                record["id"],
                record["type"],
                raw.data or b"",
                record["headers"],
                record["key"],
                record["error"],
                record["handler"],
                record["deliveries"],
                raw.seq,
            )
            sequence = raw.seq + 1

    async def requeue(self, letter: DeadLetter) -> None:
        if not isinstance(letter, DeadLetter) or not isinstance(letter.token, int):
            raise TypeError(f"requeue takes a DeadLetter from this transport's dead_letters(), got {letter!r}")
        await self._ensure_open()
        js = self._js
        headers = {
            _MSG_ID: f"{letter.message_id}~requeued~{letter.token}",
            _ID_HEADER: letter.message_id,
            _TYPE_HEADER: letter.type,
        }
        if letter.key is not None:
            headers[_KEY_HEADER] = json.dumps(letter.key)
        if letter.headers:
            headers[_HEADERS_HEADER] = json.dumps(letter.headers)
        subject = f"{self.prefix}.r.{_token(letter.group)}"
        await self._store(f"requeue the {letter.type} message {letter.message_id}", subject, letter.payload, headers)

        async def delete() -> None:
            try:
                await js.delete_msg(self.dead_stream, letter.token)
            except nats.js.errors.NotFoundError:
                pass  # requeued twice: the first one deleted it

        await self._retrying(f"remove the dead letter {letter.message_id}", delete)

    # -- tools (benchmarks, tests, operations) ----------------------------------------------

    async def pending(self, group: str) -> int:
        """Messages of ``group`` not yet acknowledged: delivered and unacked, plus undelivered."""
        await self._ensure_open()
        js = self._js
        names = await self._retrying(f"find the consumer group {group!r}", lambda: self._consumers_of(js, group))
        total = 0
        for name in names:
            info = await self._retrying(f"read the group {group!r}", lambda: js.consumer_info(self.stream, name))
            total += int(info.num_ack_pending + info.num_pending)
        return total

    async def destroy(self) -> None:
        """Delete this prefix's streams, consumers and marks from the server (tests, benchmarks)."""
        await self._ensure_open()
        js = self._js
        for stream in (self.stream, self.dead_stream, f"KV_{self.marks_bucket}"):
            try:
                await js.delete_stream(stream)
            except nats.js.errors.NotFoundError:
                pass
