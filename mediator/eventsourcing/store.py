"""``EventStore``: the public API every store has, and the contract a backend implements.

A store keeps **streams** of events (a stream is named by an aggregate's id; its events
have versions 1, 2, 3, ...) in one **global order** (``position``, from 1, increasing in
commit order as every reader sees it). Beside the events it keeps, in the same database:
named **checkpoints** (a ``Subscription``'s position), the latest **snapshot** of each
stream, the **outbox** (positions committed but not yet published on a bus) and a small
**read-model table** (namespace, key -> JSON value) that projection handlers may write.

Public API (all backends; the base class implements it on top of the contract below):

- ``await store.append(stream, events, *, expected_version, metadata=None) -> int``
- ``store.read(stream, *, after=0)``, ``store.read_all(*, after=0, limit=None)``,
  ``store.subscribe(*, after=0)``: async iterators of ``RecordedEvent``
- ``await store.version(stream)``, ``await store.checkpoint(name)``
- ``store.transaction()``: ``async with`` gives a ``Transaction`` (one unit of work)
- ``async with store`` / ``await store.open()`` / ``await store.close()``

The backend contract (what ``memory.py``, ``sqlite.py`` and ``postgres.py`` implement):

1. ``__init__(self, url: str, *, codec: Optional[Codec] = None, **options)``: no I/O;
   call ``EventStore.__init__(self, codec=codec)``. ``open_store(url, codec=..., **options)``
   constructs the class named for the URL's scheme this way.
2. ``async _open()``: connect and create the schema if it is not there (idempotent, safe
   when several processes do it at once). Called once, by the first use (``_ready``).
   ``async _close()``: release every connection; called once by ``close()``.
3. ``async _begin() -> Transaction``: start a write transaction. Transactions that write
   are serialized in commit order (at most one writer at a time, or an equivalent
   guarantee that positions become visible in order, see ``_read_all``). The base class
   calls ``tx.commit()`` on a clean exit of ``async with store.transaction()`` and
   ``tx.rollback()`` on any exception (including cancellation), then, after a commit,
   ``self._committed()`` to wake this process's subscribers.
4. Reads, outside any transaction, of committed data only. Each returns a list of row
   tuples, in this field order (``Row``): ``(position: int, stream: str, version: int,
   id: str, type: str, data: bytes | str, metadata: None | str | bytes | dict,
   recorded_at: datetime | float)``; ``metadata`` is ``None`` when the event has none
   (the base gives ``{}``), JSON text/bytes, or an already decoded dict; ``recorded_at``
   an aware ``datetime`` or POSIX seconds (a float, in UTC).

   - ``async _read_stream(stream, after, to_version, limit) -> list[Row]``: the stream's
     events with ``after < version <= to_version`` (no upper bound when ``to_version`` is
     ``None``), by version, at most ``limit`` of them.
   - ``async _read_all(after, limit) -> list[Row]``: events with ``position > after``, by
     position, at most ``limit`` (``None``: no limit). **It must never skip**: once it
     returned an event at position ``p``, no event at a position ``< p`` may commit later.
     (With one writer at a time and positions assigned under that lock this holds by
     itself. On PostgreSQL a sequence alone does not give it: a transaction that took
     position 7 may commit after one that took 8. Use a lock around
     assign-position-and-commit or a read barrier.)
   - ``async _version(stream) -> int``: the stream's version, 0 if it has no events.
   - ``async _load_snapshot(stream) -> Optional[Snapshot]``: the stream's latest snapshot.
5. ``async _wait_for_commit(after: int) -> None`` (optional override): return when events
   past position ``after`` may have been committed, or the store was closed. The base
   waits for a commit in this process (``_committed``) or ``poll_interval`` seconds (to
   see other processes' commits), whichever is first; a backend with notifications
   (``LISTEN/NOTIFY``) may do better. Spurious returns are fine.
6. A backend may override ``append`` for speed if it keeps its exact semantics
   (validation, encoding by ``_encode``, one transaction, ``_committed()`` after commit).
   It may override ``_forget_deliveries(positions)`` (take published positions out of the
   outbox, one transaction) with a cheaper commit that need not survive a power loss: if
   it is lost, those events are only published again (at least once). SQLite commits it
   with ``synchronous=NORMAL``; PostgreSQL can use ``SET LOCAL synchronous_commit = off``.

The PostgreSQL backend is ``mediator.eventsourcing.postgres.PostgresEventStore`` (imported
only when a ``postgresql://`` or ``postgres://`` URL is opened), constructed as
``PostgresEventStore(url, *, codec=None, **options)`` with the URL as given.
"""

import abc
import asyncio
import importlib
import json
import uuid
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from mediator.codec import Codec, codec as default_codec
from mediator.eventsourcing.errors import EventStoreError, StoreClosedError
from mediator.eventsourcing.records import RecordedEvent

__all__ = ["EventStore", "Transaction", "NewEvent", "Snapshot", "Row", "open_store"]

Row = Tuple[int, str, int, str, str, Any, Any, Any]
"""A stored event as a backend returns it: (position, stream, version, id, type, data,
metadata, recorded_at); see the module docstring."""

_WRITING: "ContextVar[Optional[EventStore]]" = ContextVar("mediator_eventsourcing_writing", default=None)
"""The store whose transaction the current context is inside, if any."""


class NewEvent(NamedTuple):
    """An encoded event on its way into the store (built by ``EventStore._encode``).

    ``id``: a new str uuid4; ``type``: the codec's type string; ``data``: the codec's
    JSON bytes; ``metadata``: compact JSON text of the metadata dict, or ``None`` when
    there is none. A backend stores all four as they are and gives them back in ``Row``s.
    """

    id: str
    type: str
    data: bytes
    metadata: Optional[str]


class Snapshot(NamedTuple):
    """A stream's state at ``version``: ``type`` names the state's form (the aggregate
    class and its ``snapshot_version``), ``data`` is JSON bytes. The store keeps one per
    stream (the latest saved) and returns the fields as given."""

    stream: str
    version: int
    type: str
    data: bytes


class Transaction(abc.ABC):
    """One unit of work on the store: everything done through it commits together or not
    at all. Get one with ``async with store.transaction() as tx``.

    A projection handler that takes an argument named ``transaction`` is given the
    ``Subscription``'s transaction: its writes commit together with the checkpoint. It
    writes through the portable read-model methods (``get``/``put``/``delete``/``items``)
    on every backend, or, on SQL backends, through ``execute`` (the backend's own SQL
    dialect and parameter style) or the raw ``connection``.

    Backends implement every abstract method. Names (streams, checkpoints, namespaces,
    keys) are non-empty ``str``s; the base class validates the public arguments before a
    backend sees them.
    """

    store: "EventStore"

    # -- the backend's part --------------------------------------------------------

    @abc.abstractmethod
    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: Optional[int]
    ) -> Tuple[int, List[int]]:
        """Add ``events`` to the end of ``stream``, after checking its version.

        ``expected_version``: ``None`` (no check) or the version the stream must be at
        now (``0``: it must have no events); else raise
        ``ConcurrencyError(stream, expected_version, actual_version)`` and write nothing
        (the caller then rolls the transaction back). Gives the events versions
        ``current + 1 ...`` and new global positions, greater than every position
        committed before, in order. Returns ``(new_version, positions)``. With no events,
        only the check is done and ``(current_version, [])`` is returned. Concurrent
        appends to one stream (tasks or processes) must never both succeed from the same
        version: the check and the insert are atomic (a lock, or a unique
        ``(stream, version)`` key whose violation is turned into ``ConcurrencyError``
        with the actual version read afterwards).
        """

    @abc.abstractmethod
    async def checkpoint(self, name: str) -> int:
        """The position stored under checkpoint ``name`` (0 if none)."""

    @abc.abstractmethod
    async def set_checkpoint(self, name: str, position: int) -> None:
        """Store ``position`` under checkpoint ``name`` (insert or replace)."""

    @abc.abstractmethod
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` as its stream's snapshot, replacing any older one (a
        snapshot at a lower version than the stored one is ignored)."""

    @abc.abstractmethod
    async def add_deliveries(self, positions: Sequence[int]) -> None:
        """Put ``positions`` in the outbox (events to publish after the commit)."""

    @abc.abstractmethod
    async def remove_deliveries(self, positions: Sequence[int]) -> None:
        """Take ``positions`` out of the outbox (published); absent ones are ignored."""

    @abc.abstractmethod
    async def deliveries(self, limit: Optional[int] = None) -> List[int]:
        """The outbox's positions, ascending, at most ``limit``."""

    @abc.abstractmethod
    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        """The read-model value under ``(namespace, key)``, or ``default``."""

    @abc.abstractmethod
    async def put(self, namespace: str, key: str, value: Any) -> None:
        """Store the JSON-serializable ``value`` under ``(namespace, key)`` (upsert).

        The value is stored as JSON (``json.dumps``) and read back decoded, so only JSON
        types survive (a tuple comes back as a list); a value ``json`` cannot encode is a
        ``TypeError`` naming it."""

    @abc.abstractmethod
    async def delete(self, namespace: str, key: str) -> None:
        """Remove ``(namespace, key)`` if present."""

    @abc.abstractmethod
    async def items(self, namespace: str) -> List[Tuple[str, Any]]:
        """Every ``(key, value)`` of ``namespace``, by key."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make every write of this transaction durable and visible (called by the base).

        Whether it succeeds or raises, the transaction is over afterwards (a failed
        commit rolls back and releases the writer lock/connection itself)."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Undo every write of this transaction (called by the base; must not raise on a
        transaction that already failed)."""

    # -- optional -----------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The backend's own connection this transaction runs on (``sqlite3.Connection``,
        the PostgreSQL driver's connection), or ``None`` (memory)."""
        return None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """Run one SQL statement in this transaction; returns the rows it gives (``[]``
        for none). SQL backends only, in their own dialect and parameter style."""
        raise EventStoreError(f"{type(self.store).__name__} has no SQL: use get/put/delete/items")


class EventStore(abc.ABC):
    """An asyncio event store; see the module docstring for its API and the backend
    contract. Open one with ``open_store(url)``; use it as an async context manager."""

    poll_interval: float = 0.05
    """Seconds between looks for other processes' commits while a subscriber waits."""

    batch_size: int = 500
    """Rows fetched per read while iterating."""

    def __init__(self, *, codec: Optional[Codec] = None) -> None:
        if codec is not None and not isinstance(codec, Codec):
            raise TypeError(f"codec must be a mediator.codec.Codec, got {codec!r}")
        self.codec: Codec = codec if codec is not None else default_codec
        self._opened = False
        self._closed = False
        self._open_lock: Optional[asyncio.Lock] = None
        self._commit_waiters: List["asyncio.Future[None]"] = []
        self._publishing: Set[int] = set()  # outbox positions a Repository of this process is publishing

    # -- lifecycle -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    async def open(self) -> "EventStore":
        """Connect and create the schema if needed (the first use does it anyway)."""
        await self._ready()
        return self

    async def _ready(self) -> None:
        if self._opened:
            if self._closed:
                raise StoreClosedError(f"{self!r} is closed")
            return
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._open()
                self._opened = True

    async def close(self) -> None:
        """Close the store: subscribers' loops end, later calls raise ``StoreClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._committed()
        if self._opened:
            await self._close()

    async def __aenter__(self) -> "EventStore":
        await self._ready()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- writing -------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One unit of work: committed when the block exits cleanly, else rolled back.

        Writers take turns, so code inside a transaction (and tasks or handlers it starts)
        must not write to the store outside it (it would wait for the transaction that
        waits for it): that is an ``EventStoreError``; write through the transaction.
        """
        self._check_not_in_transaction()
        await self._ready()
        tx = await self._begin()
        token = _WRITING.set(self)
        try:
            yield tx
        except BaseException:
            await asyncio.shield(tx.rollback())
            raise
        finally:
            _WRITING.reset(token)
        await tx.commit()
        self._committed()

    def _check_not_in_transaction(self) -> None:
        """Refuse a write from inside one of this store's own transactions: by the task
        that holds it, or one started (or handler run) from inside it, which the
        transaction may be waiting for. Backends' ``append`` overrides call it too."""
        if _WRITING.get() is self:
            raise EventStoreError(
                f"{self!r}: a write inside one of its own transactions would wait for that "
                "transaction to end (a projection handler saving an aggregate?); write through the "
                "transaction you hold (the injected `transaction`), or after it"
            )

    async def append(
        self,
        stream: str,
        events: Iterable[Any],
        *,
        expected_version: Optional[int],
        metadata: Optional[Dict[str, Any]] = None,
    ) -> int:
        """Append ``events`` to ``stream`` in one transaction; returns its new version.

        ``expected_version``: the version the stream must be at (``0``: it must not
        exist yet) or ``None`` (no check); a mismatch raises ``ConcurrencyError`` and
        writes nothing. ``metadata``: a JSON dict stored with each of the events.
        """
        check_stream(stream)
        check_expected(expected_version)
        new = self._encode(events, metadata)
        async with self.transaction() as tx:
            version, _ = await tx.append(stream, new, expected_version)
        return version

    async def _forget_deliveries(self, positions: Sequence[int]) -> None:
        """Take published ``positions`` out of the outbox (see the module docstring, 6.)."""
        async with self.transaction() as tx:
            await tx.remove_deliveries(positions)

    def _encode(self, events: Iterable[Any], metadata: Optional[Dict[str, Any]]) -> List[NewEvent]:
        """The events as ``NewEvent``s (codec errors raised as they are, before any I/O)."""
        if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
            raise TypeError(f"events must be an iterable of event objects, got {events!r}")
        meta = encode_metadata(metadata)
        encode = self.codec.encode
        out = []
        for event in events:
            type_string, data = encode(event)
            out.append(NewEvent(str(uuid.uuid4()), type_string, data, meta))
        return out

    # -- reading -------------------------------------------------------------------

    async def version(self, stream: str) -> int:
        """The stream's version: how many events it has (0 when it does not exist)."""
        check_stream(stream)
        await self._ready()
        return await self._version(stream)

    async def checkpoint(self, name: str) -> int:
        """The position stored under checkpoint ``name`` (0 if none)."""
        check_name("checkpoint", name)
        async with self.transaction() as tx:
            return await tx.checkpoint(name)

    async def read(
        self, stream: str, *, after: int = 0, to_version: Optional[int] = None
    ) -> AsyncIterator[RecordedEvent]:
        """The stream's events with a version above ``after`` (up to ``to_version``)."""
        check_stream(stream)
        check_position("after", after)
        if to_version is not None:
            check_position("to_version", to_version)
        await self._ready()
        record = self._record
        size = self.batch_size
        while True:
            rows = await self._read_stream(stream, after, to_version, size)
            for row in rows:
                yield record(row)
            if len(rows) < size:
                return
            after = rows[-1][2]

    async def read_all(self, *, after: int = 0, limit: Optional[int] = None) -> AsyncIterator[RecordedEvent]:
        """Every event with a position above ``after``, in position order (at most ``limit``)."""
        check_position("after", after)
        if limit is not None:
            check_position("limit", limit)
        await self._ready()
        record = self._record
        size = self.batch_size
        left = limit
        while left is None or left > 0:
            want = size if left is None else min(size, left)
            rows = await self._read_all(after, want)
            for row in rows:
                yield record(row)
            if len(rows) < want:
                return
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    async def subscribe(self, *, after: int = 0) -> AsyncIterator[RecordedEvent]:
        """Every event after position ``after``, then each one as it is committed.

        Runs until the loop is left or the store is closed (then it ends cleanly). Never
        skips an event nor gives one twice; positions come in increasing order.
        """
        check_position("after", after)
        await self._ready()
        record = self._record
        size = self.batch_size
        while not self._closed:
            rows = await self._read_all(after, size)
            if rows:
                for row in rows:
                    yield record(row)
                after = rows[-1][0]
                continue
            if self._closed:
                return
            await self._wait_for_commit(after)

    async def _load_events(self, stream: str, after: int, to_version: Optional[int]) -> List[Any]:
        """The decoded events of ``stream`` (the aggregate load path: no records built)."""
        await self._ready()
        decode = self.codec.decode
        events: List[Any] = []
        size = self.batch_size * 20
        while True:
            rows = await self._read_stream(stream, after, to_version, size)
            events += [decode(row[4], row[5]) for row in rows]
            if len(rows) < size:
                return events
            after = rows[-1][2]

    async def _load_positions(self, positions: Sequence[int]) -> Tuple[List[Any], List[int]]:
        """The decoded events at ``positions`` (ascending) and the positions found."""
        await self._ready()
        wanted = set(positions)
        decode = self.codec.decode
        events: List[Any] = []
        found: List[int] = []
        after, last = positions[0] - 1, positions[-1]
        while after < last:
            rows = await self._read_all(after, min(self.batch_size, last - after))
            if not rows:
                break
            for row in rows:
                if row[0] in wanted:
                    events.append(decode(row[4], row[5]))
                    found.append(row[0])
            after = rows[-1][0]
        return events, found

    def _record(self, row: Row) -> RecordedEvent:
        position, stream, version, id, type_string, data, metadata, recorded_at = row
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            metadata = json.loads(metadata)
        if not isinstance(recorded_at, datetime):
            recorded_at = datetime.fromtimestamp(recorded_at, timezone.utc)
        return RecordedEvent(
            stream, version, position, id, type_string, self.codec.decode(type_string, data), metadata, recorded_at
        )

    # -- live notification ---------------------------------------------------------

    def _committed(self) -> None:
        """Wake this process's waiting subscribers (after a commit, or on close)."""
        waiters, self._commit_waiters = self._commit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_commit(self, after: int) -> None:
        """Return when events past ``after`` may exist (see the module docstring, 5.)."""
        # not asyncio.wait_for: up to 3.11 it swallows a cancellation that comes as the
        # waiter is woken, and a cancelled subscriber would then run on
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.poll_interval, _wake, waiter)
        self._commit_waiters.append(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._commit_waiters:
                self._commit_waiters.remove(waiter)

    # -- the backend's part --------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect; create the schema if it is not there."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release every connection."""

    @abc.abstractmethod
    async def _begin(self) -> Transaction:
        """A new write transaction (serialized with every other writer)."""

    @abc.abstractmethod
    async def _read_stream(self, stream: str, after: int, to_version: Optional[int], limit: int) -> List[Row]:
        """Committed rows of ``stream`` with ``after < version <= to_version``, by version."""

    @abc.abstractmethod
    async def _read_all(self, after: int, limit: Optional[int]) -> List[Row]:
        """Committed rows with ``position > after``, by position; never skips (see 4.)."""

    @abc.abstractmethod
    async def _version(self, stream: str) -> int:
        """The stream's committed version (0: no events)."""

    @abc.abstractmethod
    async def _load_snapshot(self, stream: str) -> Optional[Snapshot]:
        """The stream's latest snapshot, or ``None``."""


def _wake(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


# -- argument checks shared by the backends ------------------------------------------


def check_stream(stream: Any) -> None:
    if not isinstance(stream, str) or not stream:
        raise TypeError(f"a stream name must be a non-empty str, got {stream!r}")


def check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {what} name must be a non-empty str, got {name!r}")


def check_expected(expected_version: Any) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0
    ):
        raise TypeError(f"expected_version must be None or an int >= 0, got {expected_version!r}")


def check_position(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} must be an int >= 0, got {value!r}")


def encode_metadata(metadata: Optional[Dict[str, Any]]) -> Optional[str]:
    """Compact JSON text of a metadata dict (``None`` for none or an empty one)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of JSON values, got {metadata!r}")
    if not metadata:
        return None
    try:
        return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be a dict of JSON values: {error}") from None


def encode_value(namespace: str, key: str, value: Any) -> str:
    """JSON text of a read-model value (``TypeError`` naming it if it is not JSON)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"read-model value of ({namespace!r}, {key!r}) is not JSON: {error}") from None


# -- open_store ---------------------------------------------------------------------


def open_store(url: str, *, codec: Optional[Codec] = None, **options: Any) -> EventStore:
    """The store ``url`` names, not yet connected (its first use, or ``async with``, does).

    - ``memory://``: in this process only (tests, prototypes);
    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (as SQLAlchemy
      writes them), ``sqlite:///:memory:``: the embedded store (standard library);
    - ``postgresql://user@host:port/db`` (or ``postgres://``): ``pip install
      mediator[postgres]``.

    ``codec``: the ``Codec`` for events (default: ``mediator.codec.codec``); ``options``
    go to the backend (e.g. ``poll_interval``).
    """
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a str, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a store URL: {url!r} (memory://, sqlite:///path.db, postgresql://...)")
    scheme = scheme.lower()
    if scheme == "memory":
        from mediator.eventsourcing.memory import MemoryEventStore

        return MemoryEventStore(url, codec=codec, **options)
    if scheme == "sqlite":
        from mediator.eventsourcing.sqlite import SQLiteEventStore

        return SQLiteEventStore(url, codec=codec, **options)
    if scheme in ("postgresql", "postgres"):
        try:  # by name: the module is optional (and its driver too)
            PostgresEventStore = importlib.import_module("mediator.eventsourcing.postgres").PostgresEventStore
        except ImportError as error:
            raise ImportError(
                f"{url!r} needs the PostgreSQL backend's driver: pip install 'mediator[postgres]' ({error})"
            ) from error
        return PostgresEventStore(url, codec=codec, **options)
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}: use memory://, sqlite:///..., postgresql://...")
