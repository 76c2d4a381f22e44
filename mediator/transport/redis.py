"""``redis://``: the transport on Redis Streams (redis-py asyncio; hiredis when installed).

Layout, for a key prefix ``P`` (``prefix=``, or ``?prefix=`` in the URL; default
``mediator``):

- ``P:s:FAMILY``: one stream per event type family (``bank.Deposited`` for every version
  of it), trimmed with ``XADD ... MAXLEN ~ maxlen``. The publishes of one loop iteration
  (or one ``publish_many``) go in one script call that runs their ``XADD``s: one round
  trip and one reply for up to 500 messages. An entry's fields: ``i`` message id,
  ``t`` type string, ``p`` payload, ``k`` key and ``h`` headers (JSON), when present.
- A consumer group (``XGROUP CREATE ... MKSTREAM``, at ``$`` for ``start="latest"``, ``0``
  for ``"earliest"``) on each stream its worker's bus consumes, plus ``P:rq:GROUP``, the
  stream its requeued dead letters go to (that group's only).
- ``P:dl:GROUP``: the group's dead letters (the entry's fields plus ``e`` error, ``hd``
  handler, ``n`` deliveries), written and acknowledged in one ``MULTI``.
- ``P:done:GROUP:ID``: the handlers that succeeded for a message a sibling failed
  (a set, dropped on acknowledgement, expiring after ``done_ttl``).
- ``P:inbox:GROUP:ID``: ``RedisInbox`` records (expiring after its ``ttl``).

Claims are the group's pending entries list: a fetch takes new entries with
``XREADGROUP >`` and, in the worker's own loop, reclaims entries idle past
``claim_idle`` with ``XAUTOCLAIM`` (their delivery counter is Redis's). A running
handler's claim is kept by resetting its idle time (``XCLAIM ... JUSTID``, only while
this consumer still owns it); a retry sets the idle time to ``claim_idle - delay`` so
that any consumer of the group reclaims it ``delay`` seconds later; a release sets it
past ``claim_idle`` (with ``RETRYCOUNT`` so that it is not counted).

Every command retries on a lost connection (a broker restart) with exponential
backoff for up to ``reconnect_timeout`` seconds, then raises
``TransportConnectionError``. Redis has no deduplication: a publish retried after a
lost reply may store the message twice, under one message id (an inbox removes it).
"""

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mediator.transport.base import DeadLetter, Delivery, Transport, check_name, check_start, type_family
from mediator.transport.errors import (
    ConsumerGroupError,
    TransportClosedError,
    TransportConnectionError,
    TransportError,
)
from mediator.transport.inbox import Inbox

__all__ = ["RedisTransport", "RedisInbox"]

logger = logging.getLogger("mediator.transport")

T = TypeVar("T")

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)
_OPTIONS = ("prefix", "maxlen")
_PUBLISH_BATCH = 500

# Reset the idle time (or the delivery counter) of entries this consumer still owns:
# KEYS[1] stream; ARGV: group, consumer, idle ms (-1: now), retry count (-1: keep), ids...
_CLAIM_OWN = """
local done = 0
for i = 5, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local args = {KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i]}
    if ARGV[3] ~= '-1' then table.insert(args, 'IDLE'); table.insert(args, ARGV[3]) end
    if ARGV[4] ~= '-1' then table.insert(args, 'RETRYCOUNT'); table.insert(args, ARGV[4]) end
    table.insert(args, 'JUSTID')
    redis.call('XCLAIM', unpack(args))
    done = done + 1
  end
end
return done
"""

# Publish a batch: KEYS the streams; ARGV[1] maxlen ('' for none), then six per message:
# the stream's index in KEYS, message id, type, payload, '=' .. key or '', headers or ''.
_PUBLISH = """
local maxlen = ARGV[1]
for i = 2, #ARGV, 6 do
  local args = {KEYS[tonumber(ARGV[i])]}
  if maxlen ~= '' then args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen end
  args[#args + 1] = '*'
  args[#args + 1] = 'i'; args[#args + 1] = ARGV[i + 1]
  args[#args + 1] = 't'; args[#args + 1] = ARGV[i + 2]
  args[#args + 1] = 'p'; args[#args + 1] = ARGV[i + 3]
  if ARGV[i + 4] ~= '' then args[#args + 1] = 'k'; args[#args + 1] = string.sub(ARGV[i + 4], 2) end
  if ARGV[i + 5] ~= '' then args[#args + 1] = 'h'; args[#args + 1] = ARGV[i + 5] end
  redis.call('XADD', unpack(args))
end
return (#ARGV - 1) / 6
"""

# Move a dead letter back to its group: KEYS[1] dead letters, KEYS[2] requeue stream;
# ARGV[1] the letter's id, ARGV[2..] the fields of the new entry. 0 if it was gone.
_REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTransport(Transport):
    """Redis Streams (see the module docstring for the layout and the semantics).

    Options (keywords, or the URL's query): ``prefix`` (key prefix, default
    ``"mediator"``), ``maxlen`` (approximate bound of each stream, default 1,000,000;
    ``0``/``None``: unbounded), ``dead_maxlen`` (of each dead-letter stream, default
    100,000), ``reconnect_timeout`` (seconds, default 30), ``done_ttl`` (seconds, default
    7 days); any other keyword goes to ``redis.asyncio.Redis``.
    """

    scheme = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        codec: Any = None,
        prefix: Optional[str] = None,
        maxlen: Optional[int] = -1,
        dead_maxlen: Optional[int] = 100_000,
        reconnect_timeout: float = 30.0,
        done_ttl: int = 7 * 24 * 3600,
        **redis_options: Any,
    ) -> None:
        super().__init__(codec=codec)
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        if prefix is None:
            prefix = query.get("prefix", "mediator")
        if maxlen == -1:
            maxlen = int(query["maxlen"]) if "maxlen" in query else 1_000_000
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0):
            raise ValueError(f"maxlen must be an int >= 0 or None, got {maxlen!r}")
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"prefix must be a non-empty str without spaces, got {prefix!r}")
        self.prefix = prefix
        self.maxlen = maxlen or None
        self._maxlen_arg = str(self.maxlen).encode() if self.maxlen else b""
        self.dead_maxlen = dead_maxlen or None
        self.reconnect_timeout = float(reconnect_timeout)
        self.done_ttl = int(done_ttl)
        self.url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query.items() if k not in _OPTIONS])))
        options: Dict[str, Any] = {
            "socket_timeout": 30.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),  # this transport retries, with its own backoff
        }
        options.update(redis_options)
        self._redis_options = options
        self._client: Optional[aioredis.Redis] = None
        self._claim_idle: Dict[str, float] = {}
        self._keys: Dict[Tuple[str, str], bytes] = {}
        self._type_streams: Dict[str, bytes] = {}  # type string -> its family's stream key
        self._streams: Dict[str, List[bytes]] = {}  # group -> its streams' keys
        self._next_reclaim: Dict[str, float] = {}
        self._reclaim_from: Dict[Tuple[str, bytes], bytes] = {}
        self._parked: Dict[Any, "asyncio.Task[None]"] = {}
        self._batch: Optional[List[Tuple[Tuple[Any, ...], "asyncio.Future[None]"]]] = None
        self._claim_script: Any = None
        self._requeue_script: Any = None
        self._publish_script: Any = None

    def __repr__(self) -> str:
        return f"<RedisTransport {self.url} prefix={self.prefix!r}{' closed' if self._closed else ''}>"

    # -- connection ----------------------------------------------------------------------------

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (made on first use)."""
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, **self._redis_options)
            self._claim_script = self._client.register_script(_CLAIM_OWN)
            self._requeue_script = self._client.register_script(_REQUEUE)
            self._publish_script = self._client.register_script(_PUBLISH)
        return self._client

    async def _open(self) -> None:
        await self._retrying("connect", lambda: self.client.ping())

    async def _close(self) -> None:
        for task in list(self._parked.values()):
            task.cancel()
        self._parked.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose() if hasattr(client, "aclose") else await client.close()

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[T]], timeout: Optional[float] = None) -> T:
        """``operation()``, again after connection failures, with backoff, for up to ``timeout``."""
        deadline = time.monotonic() + (self.reconnect_timeout if timeout is None else timeout)
        delay = 0.05
        while True:
            if self._closed:
                raise TransportClosedError(f"{self!r} is closed: cannot {what}")
            try:
                return await operation()
            except _RETRYABLE as error:
                if time.monotonic() + delay > deadline:
                    raise TransportConnectionError(
                        f"{self!r}: could not {what}: the broker did not answer ({type(error).__name__}: {error})"
                    ) from error
                logger.warning("%r: %s failed (%s: %s); retrying in %.2fs", self, what, type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _key(self, kind: str, name: str) -> bytes:
        key = (kind, name)
        found = self._keys.get(key)
        if found is None:
            found = f"{self.prefix}:{kind}:{name}".encode()
            if kind in ("s", "rq", "dl") and len(self._keys) < 10_000:
                self._keys[key] = found
        return found

    # -- publishing ----------------------------------------------------------------------------

    def _send(  # type: ignore[override]
        self, type: str, payload: bytes, key: Optional[str], headers: Dict[str, str], message_id: str
    ) -> "asyncio.Future[None]":
        """Joins the batch of this loop iteration's publishes (one round trip for all).

        Not a coroutine: the future it returns is what the caller awaits (one frame less
        per publish).
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._batch
        if batch is None:
            batch = self._batch = []
            loop.call_soon(self._flush)
        batch.append(((type, payload, key, headers, message_id), future))
        if len(batch) >= _PUBLISH_BATCH:
            self._flush()
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            asyncio.get_running_loop().create_task(self._send_batch(batch))

    async def _send_batch(self, batch: List[Tuple[Tuple[Any, ...], "asyncio.Future[None]"]]) -> None:
        try:
            await self._store([message for message, _ in batch])
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _send_many(self, batch: Sequence[Tuple[str, bytes, Optional[str], Dict[str, str], str]]) -> None:
        await self._store(batch)

    async def _store(self, messages: Sequence[Tuple[Any, ...]]) -> None:
        """XADD every message, ``_PUBLISH_BATCH`` of them per script call (one reply each)."""
        for start in range(0, len(messages), _PUBLISH_BATCH):
            keys: List[bytes] = []
            index: Dict[bytes, bytes] = {}
            args: List[Any] = [self._maxlen_arg]
            streams = self._type_streams
            for type, payload, key, headers, message_id in messages[start : start + _PUBLISH_BATCH]:
                stream = streams.get(type)
                if stream is None:
                    stream = self._key("s", type_family(type))
                    if len(streams) < 10_000:
                        streams[type] = stream
                position = index.get(stream)
                if position is None:
                    keys.append(stream)
                    position = index[stream] = str(len(keys)).encode()
                args += (
                    position,
                    message_id,
                    type,
                    payload,
                    b"" if key is None else b"=" + key.encode(),
                    json.dumps(headers, separators=(",", ":")) if headers else b"",
                )
            await self._retrying(
                f"publish {(len(args) - 1) // 6} message(s)", lambda: self._publish_script(keys=keys, args=args)
            )

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letters(self, group: str) -> AsyncIterator[DeadLetter]:
        key = self._key("dl", group)
        start = b"-"
        while True:
            entries: Any = await self._retrying(
                "read dead letters", lambda: self.client.xrange(key, min=start, max=b"+", count=200)
            )
            for entry_id, fields in entries:
                yield DeadLetter(
                    group,
                    _text(fields[b"i"]),
                    _text(fields[b"t"]),
                    bytes(fields[b"p"]),
                    json.loads(fields[b"h"]) if b"h" in fields else {},
                    _text(fields[b"k"]) if b"k" in fields else None,
                    _text(fields[b"e"]),
                    _text(fields[b"hd"]) if b"hd" in fields else None,
                    int(fields[b"n"]),
                    entry_id,
                )
            if len(entries) < 200:
                return
            start = b"(" + entries[-1][0]

    async def requeue(self, letter: DeadLetter) -> None:
        fields: List[Any] = ["i", letter.message_id, "t", letter.type, "p", letter.payload]
        if letter.key is not None:
            fields += ["k", letter.key]
        if letter.headers:
            fields += ["h", json.dumps(letter.headers, separators=(",", ":"))]
        keys = [self._key("dl", letter.group), self._key("rq", letter.group)]
        done = await self._retrying(
            "requeue a dead letter", lambda: self._requeue_script(keys=keys, args=[letter.token, *fields])
        )
        if not done:
            raise TransportError(f"{letter!r} is not among the dead letters of group {letter.group!r} any more")

    # -- the worker's side ---------------------------------------------------------------------

    async def ensure_group(self, group: str, types: Sequence[str], *, start: str, claim_idle: float) -> None:
        check_name("the group", group)
        position = "$" if check_start(start) == "latest" else "0"
        keys = sorted({self._key("s", type_family(type)) for type in types})
        keys.append(self._key("rq", group))
        for key in keys:
            try:
                await self._retrying(
                    f"create group {group!r}", lambda: self.client.xgroup_create(key, group, id=position, mkstream=True)
                )
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise ConsumerGroupError(f"{self!r}: cannot create group {group!r} on {key!r}: {error}") from error
        known = self._streams.setdefault(group, [])
        known.extend(key for key in keys if key not in known)
        self._claim_idle[group] = float(claim_idle)
        self._next_reclaim.setdefault(group, 0.0)

    def _group_streams(self, group: str) -> List[bytes]:
        streams = self._streams.get(group)
        if streams is None:
            raise ConsumerGroupError(f"{self!r}: call ensure_group({group!r}, ...) before consuming it")
        return streams

    def _parse(self, group: str, consumer: str, stream: bytes, entry_id: bytes, fields: Dict[bytes, bytes], count: int) -> Delivery:
        try:
            message_id = fields[b"i"].decode()
            type = fields[b"t"].decode()
            payload = fields[b"p"]
        except (KeyError, UnicodeDecodeError):  # not written by this transport: it is dead-lettered as undecodable
            message_id = _text(fields.get(b"i", entry_id))
            type = _text(fields.get(b"t", b"?"))
            payload = json.dumps({_text(k): _text(v) for k, v in fields.items()}).encode()
        raw_headers = fields.get(b"h")
        headers: Dict[str, str] = {}
        if raw_headers:
            try:
                headers = json.loads(raw_headers)
            except ValueError:  # not written by this transport: the payload may still decode
                logger.warning("%r: message %s has headers that are not JSON: %r", self, message_id, raw_headers)
                headers = {"invalid-headers": raw_headers.decode(errors="replace")}
        key = fields.get(b"k")
        return Delivery(group, message_id, type, payload, headers, None if key is None else _text(key), count, (stream, entry_id, consumer))

    async def fetch(self, group: str, consumer: str, max_messages: int, timeout: float) -> List[Delivery]:
        streams = self._group_streams(group)
        client = self.client
        found: List[Delivery] = []
        now = time.monotonic()
        if now >= self._next_reclaim[group]:
            claim_idle = self._claim_idle[group]
            self._next_reclaim[group] = now + min(1.0, claim_idle / 4)
            try:
                found = await self._reclaim(group, consumer, streams, max_messages, claim_idle)
            except _RETRYABLE as error:
                self._next_reclaim[group] = 0.0
                raise TransportConnectionError(f"{self!r}: reclaim failed: {type(error).__name__}: {error}") from error
        wanted = max_messages - len(found)
        if wanted <= 0:
            return found
        block_ms: Optional[int] = None
        if not found:
            until_reclaim = self._next_reclaim[group] - time.monotonic()
            block_ms = max(1, int(min(timeout, max(until_reclaim, 0.001)) * 1000))
        try:
            reply: Any = await client.xreadgroup(
                group, consumer, {key: ">" for key in streams}, count=wanted, block=block_ms
            )
        except _RETRYABLE as error:
            if found:  # claimed already: hand them out; the read is retried on the next fetch
                return found
            raise TransportConnectionError(f"{self!r}: fetch failed: {type(error).__name__}: {error}") from error
        for stream, entries in reply or ():
            for entry_id, fields in entries:
                if fields is None:  # trimmed before it was read
                    continue
                found.append(self._parse(group, consumer, stream, entry_id, fields, 1))
        return found

    async def _reclaim(self, group: str, consumer: str, streams: List[bytes], limit: int, claim_idle: float) -> List[Delivery]:
        client = self.client
        idle_ms = int(claim_idle * 1000)
        found: List[Delivery] = []
        for stream in streams:
            if len(found) >= limit:
                break
            start = self._reclaim_from.get((group, stream), b"0-0")
            reply = await client.xautoclaim(stream, group, consumer, idle_ms, start_id=start, count=limit - len(found))
            next_start, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            self._reclaim_from[(group, stream)] = next_start
            if deleted:
                logger.warning(
                    "%r: group %r: %d pending message(s) of %r were trimmed before being handled: %r",
                    self,
                    group,
                    len(deleted),
                    stream,
                    deleted,
                )
            entries = [(entry_id, fields) for entry_id, fields in entries if fields]
            if not entries:
                continue
            pipe = client.pipeline(transaction=False)
            for entry_id, _ in entries:
                pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
            counts = await pipe.execute()
            for (entry_id, fields), pending in zip(entries, counts):
                count = pending[0]["times_delivered"] if pending else 1
                found.append(self._parse(group, consumer, stream, entry_id, fields, count))
        return found

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        by_stream: Dict[Tuple[str, bytes], List[bytes]] = {}
        done_keys = []
        for delivery in deliveries:
            stream, entry_id, _ = delivery.token
            by_stream.setdefault((delivery.group, stream), []).append(entry_id)
            if delivery.deliveries > 1:
                done_keys.append(self._key("done", f"{delivery.group}:{delivery.message_id}"))

        if len(by_stream) == 1 and not done_keys:  # the usual case: one command, no pipeline
            ((group, stream), ids), = by_stream.items()
            await self._retrying(
                f"acknowledge {len(deliveries)} message(s)", lambda: self.client.xack(stream, group, *ids)
            )
            return

        async def send() -> None:
            pipe = self.client.pipeline(transaction=False)
            for (group, stream), ids in by_stream.items():
                pipe.xack(stream, group, *ids)
            if done_keys:
                pipe.delete(*done_keys)
            await pipe.execute()

        await self._retrying(f"acknowledge {len(deliveries)} message(s)", send)

    async def _claim_own(self, delivery_group: str, consumer: str, stream: bytes, ids: Sequence[bytes], idle_ms: int, count: int) -> None:
        keys = [stream]
        args = [delivery_group, consumer, idle_ms, count, *ids]
        await self._retrying("update claims", lambda: self._claim_script(keys=keys, args=args))

    async def retry(self, delivery: Delivery, delay: float) -> None:
        stream, entry_id, consumer = delivery.token
        claim_idle = self._claim_idle.get(delivery.group, 30.0)
        if delay <= claim_idle:
            await self._claim_own(delivery.group, consumer, stream, [entry_id], int((claim_idle - delay) * 1000), -1)
            self._next_reclaim[delivery.group] = min(self._next_reclaim.get(delivery.group, 0.0), time.monotonic() + delay)
            return
        # Longer than a claim lasts: keep it claimed here until claim_idle before it is due.
        key = (delivery.group, stream, entry_id)
        old = self._parked.pop(key, None)
        if old is not None:
            old.cancel()
        self._parked[key] = asyncio.get_running_loop().create_task(self._park(key, delivery, delay, claim_idle))

    async def _park(self, key: Any, delivery: Delivery, delay: float, claim_idle: float) -> None:
        stream, entry_id, consumer = delivery.token
        due = time.monotonic() + delay
        try:
            while due - time.monotonic() > claim_idle:
                await asyncio.sleep(min(claim_idle / 3, due - time.monotonic() - claim_idle))
                await self._claim_own(delivery.group, consumer, stream, [entry_id], -1, -1)
            remaining = max(0.0, due - time.monotonic())
            await self._claim_own(delivery.group, consumer, stream, [entry_id], int((claim_idle - remaining) * 1000), -1)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("%r: could not keep %r parked for its retry; it comes back after claim_idle", self, delivery)
        finally:
            if self._parked.get(key) is asyncio.current_task():
                del self._parked[key]

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            stream, entry_id, consumer = delivery.token
            claim_idle = self._claim_idle.get(delivery.group, 30.0)
            await self._claim_own(
                delivery.group, consumer, stream, [entry_id], int(claim_idle * 1000) + 1000, delivery.deliveries - 1
            )
            self._next_reclaim[delivery.group] = 0.0

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        by_stream: Dict[Tuple[str, str, bytes], List[bytes]] = {}
        for delivery in deliveries:
            stream, entry_id, consumer = delivery.token
            by_stream.setdefault((delivery.group, consumer, stream), []).append(entry_id)
        for (group, consumer, stream), ids in by_stream.items():
            await self._claim_own(group, consumer, stream, ids, -1, -1)

    async def dead_letter(self, delivery: Delivery, *, error: str, handler: Optional[str]) -> None:
        stream, entry_id, _ = delivery.token
        fields: List[Any] = ["i", delivery.message_id, "t", delivery.type, "p", delivery.payload]
        if delivery.key is not None:
            fields += ["k", delivery.key]
        if delivery.headers:
            fields += ["h", json.dumps(delivery.headers, separators=(",", ":"))]
        fields += ["e", error, "n", delivery.deliveries]
        if handler is not None:
            fields += ["hd", handler]
        dead = self._key("dl", delivery.group)
        trim = ["MAXLEN", "~", self.dead_maxlen] if self.dead_maxlen else []

        async def send() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.execute_command("XADD", dead, *trim, "*", *fields)
            pipe.xack(stream, delivery.group, entry_id)
            pipe.delete(self._key("done", f"{delivery.group}:{delivery.message_id}"))
            await pipe.execute()

        await self._retrying("dead-letter a message", send)

    async def handlers_done(self, delivery: Delivery) -> FrozenSet[str]:
        key = self._key("done", f"{delivery.group}:{delivery.message_id}")
        names = await self._retrying("read handler progress", lambda: self.client.smembers(key))
        return frozenset(_text(name) for name in names)

    async def mark_handlers_done(self, delivery: Delivery, names: Sequence[str]) -> None:
        if not names:
            return
        key = self._key("done", f"{delivery.group}:{delivery.message_id}")

        async def send() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.sadd(key, *names)
            pipe.expire(key, self.done_ttl)
            await pipe.execute()

        await self._retrying("record handler progress", send)


class RedisInbox(Inbox):
    """An inbox in Redis: a key ``PREFIX:inbox:GROUP:ID`` per processed message, for ``ttl`` s.

    ``RedisInbox(transport)`` shares a ``RedisTransport``'s connection and prefix;
    ``ttl`` (default 7 days) should exceed the longest time a duplicate can arrive.
    """

    def __init__(self, transport: RedisTransport, *, ttl: int = 7 * 24 * 3600) -> None:
        if not isinstance(transport, RedisTransport):
            raise TypeError(f"RedisInbox needs a RedisTransport, got {transport!r}")
        self.transport = transport
        self.ttl = int(ttl)

    def _key(self, group: str, message_id: str) -> bytes:
        return self.transport._key("inbox", f"{group}:{message_id}")

    async def seen(self, group: str, message_id: str) -> bool:
        key = self._key(group, message_id)
        return bool(await self.transport._retrying("read the inbox", lambda: self.transport.client.exists(key)))

    async def record(self, group: str, message_id: str) -> None:
        key = self._key(group, message_id)
        await self.transport._retrying("write the inbox", lambda: self.transport.client.set(key, b"1", ex=self.ttl))
