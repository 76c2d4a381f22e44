"""``sqlite:///path.db``: the embedded event store (standard library ``sqlite3``).

The database runs in WAL mode: readers never wait for the writer. Writes go through one
connection owned by one thread (``_worker.Worker``: statements run in the order they
were sent, cancellation included) and one transaction at a time: an ``asyncio.Lock``
in the process, ``BEGIN IMMEDIATE`` (SQLite's write lock, waited for up to ``timeout``
seconds) across processes. Positions are the table's rowid, assigned under that lock,
so they increase in commit order and a reader never skips one. Reads use a second
connection on a thread of its own.

An ``append`` is one trip to the writer thread (begin, version check, insert, commit):
we measured it against ``aiosqlite``, whose every statement is a trip of its own, and
kept the standard library (see benchmarks/README.md).
"""

import asyncio
import json
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar, cast

from mediator.codec import Codec
from mediator.eventsourcing._worker import Worker
from mediator.eventsourcing.errors import ConcurrencyError, EventStoreError
from mediator.eventsourcing.store import (
    EventStore,
    NewEvent,
    Row,
    Snapshot,
    Transaction,
    check_expected,
    check_name,
    check_stream,
    encode_value,
)

__all__ = ["SQLiteEventStore"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata TEXT,
    recorded_at REAL NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT PRIMARY KEY, version INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (position INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS read_models (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""

_COLUMNS = "position, stream, version, id, type, data, metadata, recorded_at"
_INSERT = "INSERT INTO events (stream, version, id, type, data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
_VERSION = "SELECT max(version) FROM events WHERE stream = ?"


def parse_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (SQLAlchemy's form)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        raise ValueError(f"not a SQLite URL: {url!r} (sqlite:///relative.db or sqlite:////absolute.db)")
    path = rest[1:].partition("?")[0]
    if not path:
        raise ValueError(f"the SQLite URL {url!r} names no file (sqlite:///relative.db, sqlite:///:memory:)")
    return path


def _append_rows(
    conn: sqlite3.Connection, stream: str, events: Sequence[NewEvent], expected: Optional[int]
) -> Tuple[int, List[int]]:
    """In the writer thread, inside a transaction: check the version, insert the events."""
    current = conn.execute(_VERSION, (stream,)).fetchone()[0] or 0
    if expected is not None and expected != current:
        raise ConcurrencyError(stream, expected, current)
    if not events:
        return current, []
    now = time.time()
    rows = [(stream, current + i, e.id, e.type, e.data, e.metadata, now) for i, e in enumerate(events, 1)]
    count = len(rows)
    if count == 1:
        last = cast(int, conn.execute(_INSERT, rows[0]).lastrowid)  # an INSERT always sets it
    else:
        conn.executemany(_INSERT, rows)
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    # one writer at a time: the rowids of this statement are contiguous
    return current + count, list(range(last - count + 1, last + 1))


class _SQLiteTransaction(Transaction):
    store: "SQLiteEventStore"

    def __init__(self, store: "SQLiteEventStore") -> None:
        self.store = store
        self._conn = store._writer
        self._done = False

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def _call(self, fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        if self._done:
            raise EventStoreError("this transaction is over (committed or rolled back)")
        return self.store._write(fn, *args)

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: Optional[int]
    ) -> Tuple[int, List[int]]:
        return await self._call(_append_rows, self._conn, stream, events, expected_version)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        def run() -> List[Tuple[Any, ...]]:
            return self._conn.execute(sql, params).fetchall()

        return await self._call(run)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        return await self.execute(sql, params)

    async def checkpoint(self, name: str) -> int:
        rows = await self._query("SELECT position FROM checkpoints WHERE name = ?", (name,))
        return rows[0][0] if rows else 0

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._query(
            "INSERT INTO checkpoints (name, position) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (name, position),
        )

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._query(
            "INSERT INTO snapshots (stream, version, type, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, type = excluded.type, "
            "data = excluded.data WHERE excluded.version >= snapshots.version",
            (snapshot.stream, snapshot.version, snapshot.type, snapshot.data),
        )

    async def add_deliveries(self, positions: Sequence[int]) -> None:
        conn = self._conn

        def run() -> None:
            conn.executemany("INSERT OR IGNORE INTO outbox (position) VALUES (?)", [(p,) for p in positions])

        await self._call(run)

    async def remove_deliveries(self, positions: Sequence[int]) -> None:
        conn = self._conn

        def run() -> None:
            conn.executemany("DELETE FROM outbox WHERE position = ?", [(p,) for p in positions])

        await self._call(run)

    async def deliveries(self, limit: Optional[int] = None) -> List[int]:
        rows = await self._query("SELECT position FROM outbox ORDER BY position LIMIT ?", (-1 if limit is None else limit,))
        return [row[0] for row in rows]

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        check_name("namespace", namespace)
        check_name("key", key)
        rows = await self._query("SELECT value FROM read_models WHERE namespace = ? AND key = ?", (namespace, key))
        return json.loads(rows[0][0]) if rows else default

    async def put(self, namespace: str, key: str, value: Any) -> None:
        check_name("namespace", namespace)
        check_name("key", key)
        await self._query(
            "INSERT INTO read_models (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            (namespace, key, encode_value(namespace, key, value)),
        )

    async def delete(self, namespace: str, key: str) -> None:
        await self._query("DELETE FROM read_models WHERE namespace = ? AND key = ?", (namespace, key))

    async def items(self, namespace: str) -> List[Tuple[str, Any]]:
        rows = await self._query("SELECT key, value FROM read_models WHERE namespace = ? ORDER BY key", (namespace,))
        return [(key, json.loads(value)) for key, value in rows]

    async def commit(self) -> None:
        if self._done:
            raise EventStoreError("this transaction is over (committed or rolled back)")
        self._done = True
        try:
            await self.store._write(_commit, self._conn)
        finally:
            self.store._lock.release()

    async def rollback(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self.store._write(_rollback, self._conn)
        finally:
            self.store._lock.release()


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _append_transaction(
    conn: sqlite3.Connection, stream: str, events: Sequence[NewEvent], expected: Optional[int]
) -> int:
    """The whole of ``append``, in the writer thread: one trip."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version, _ = _append_rows(conn, stream, events, expected)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return version


def _forget_transaction(conn: sqlite3.Connection, positions: Sequence[int], synchronous: str) -> None:
    """Delete outbox rows in a commit that does not wait for the disk (WAL, NORMAL)."""
    lazy = synchronous in ("FULL", "EXTRA")
    if lazy:
        conn.execute("PRAGMA synchronous = NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM outbox WHERE position = ?", [(p,) for p in positions])
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
    finally:
        if lazy:
            conn.execute(f"PRAGMA synchronous = {synchronous}")


class SQLiteEventStore(EventStore):
    """The ``sqlite:///path.db`` store.

    Options: ``timeout`` (seconds to wait for another process's write lock, default 30),
    ``synchronous`` (SQLite's ``PRAGMA synchronous``: ``"FULL"``, the default, syncs the
    log at every commit; ``"NORMAL"`` survives a process crash but may lose the last
    commits to a power loss, and is faster), ``poll_interval`` (seconds between looks
    for other processes' commits while a subscriber waits).
    """

    def __init__(
        self,
        url: str,
        *,
        codec: Optional[Codec] = None,
        timeout: float = 30.0,
        synchronous: str = "FULL",
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(codec=codec)
        self.url = url
        self.path = parse_path(url)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._writer: Any = None
        self._reader: Any = None
        self._write_thread: Optional[Worker] = None
        self._read_thread: Optional[Worker] = None
        self._lock: Any = None  # an asyncio.Lock, made in the loop (on 3.9 a Lock binds the loop it is made in)

    def __repr__(self) -> str:
        return f"<SQLiteEventStore {self.url!r}>"

    # -- threads -------------------------------------------------------------------

    def _write(self, fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        return self._write_thread.submit(fn, *args)  # type: ignore[union-attr]

    def _read(self, fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        return self._read_thread.submit(fn, *args)  # type: ignore[union-attr]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    # -- lifecycle -----------------------------------------------------------------

    async def _open(self) -> None:
        self._lock = asyncio.Lock()
        self._write_thread = Worker("mediator-sqlite-writer")
        self._writer = await self._write(self._connect)
        await self._write(self._create_schema, self._writer)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            self._read_thread, self._reader = self._write_thread, self._writer  # one database: one connection
        else:
            self._read_thread = Worker("mediator-sqlite-reader")
            self._reader = await self._read(self._connect)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() not in ("wal", "memory"):
            raise EventStoreError(f"{self.url!r}: SQLite refused WAL mode (journal_mode is {mode!r})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    async def _close(self) -> None:
        async with self._lock:  # let the running transaction finish
            if self._reader is not None and self._reader is not self._writer:
                await self._read(self._reader.close)
            if self._writer is not None:
                await self._write(self._writer.close)
        for thread in {self._write_thread, self._read_thread}:
            if thread is not None:
                thread.shutdown()

    # -- writing -------------------------------------------------------------------

    async def _begin(self) -> Transaction:
        await self._lock.acquire()
        try:
            await self._write(self._writer.execute, "BEGIN IMMEDIATE")
        except BaseException:
            # cancelled, the BEGIN may still run: the rollback queued behind it undoes it
            self._write(_rollback, self._writer)
            self._lock.release()
            raise
        return _SQLiteTransaction(self)

    async def append(
        self,
        stream: str,
        events: Iterable[Any],
        *,
        expected_version: Optional[int],
        metadata: Optional[Dict[str, Any]] = None,
    ) -> int:
        check_stream(stream)
        check_expected(expected_version)
        self._check_not_in_transaction()
        new = self._encode(events, metadata)
        await self._ready()
        async with self._lock:
            version = await self._write(_append_transaction, self._writer, stream, new, expected_version)
        self._committed()
        return version

    async def _forget_deliveries(self, positions: Sequence[int]) -> None:
        # published: if a power loss undoes this commit, they are only published again
        self._check_not_in_transaction()
        await self._ready()
        async with self._lock:
            await self._write(_forget_transaction, self._writer, positions, self.synchronous)

    # -- reading -------------------------------------------------------------------

    async def _read_stream(self, stream: str, after: int, to_version: Optional[int], limit: int) -> List[Row]:
        reader = self._reader
        if to_version is None:
            sql = f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version > ? ORDER BY version LIMIT ?"
            params: Tuple[Any, ...] = (stream, after, limit)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version > ? AND version <= ? "
                "ORDER BY version LIMIT ?"
            )
            params = (stream, after, to_version, limit)
        return await self._read(_fetch, reader, sql, params)

    async def _load_events(self, stream: str, after: int, to_version: Optional[int]) -> List[Any]:
        """The decoded events of ``stream`` (an aggregate's load: two columns, one query)."""
        await self._ready()
        sql = "SELECT type, data FROM events WHERE stream = ? AND version > ? AND version <= ? ORDER BY version"
        params = (stream, after, 2**62 if to_version is None else to_version)
        decode = self.codec.decode
        return [decode(type_string, data) for type_string, data in await self._read(_fetch, self._reader, sql, params)]

    async def _read_all(self, after: int, limit: Optional[int]) -> List[Row]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        return await self._read(_fetch, self._reader, sql, (after, -1 if limit is None else limit))

    async def _version(self, stream: str) -> int:
        rows = await self._read(_fetch, self._reader, _VERSION, (stream,))
        return rows[0][0] or 0

    async def _load_snapshot(self, stream: str) -> Optional[Snapshot]:
        rows = await self._read(
            _fetch, self._reader, "SELECT stream, version, type, data FROM snapshots WHERE stream = ?", (stream,)
        )
        return Snapshot(*rows[0]) if rows else None


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> List[Any]:
    return conn.execute(sql, params).fetchall()
