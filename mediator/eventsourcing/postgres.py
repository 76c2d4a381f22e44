"""``postgresql://``: the event store on PostgreSQL, through asyncpg (``pip install
mediator[postgres]``; CPython only: asyncpg does not build on PyPy).

Schema (created on first use, under a transaction-level advisory lock so that several
processes may open a fresh database at once; the tables go to the first schema of the
connection's ``search_path``, which a URL may set: ``...?search_path=myschema``):

- ``mediator_events``: ``position`` (the global order, primary key), ``stream``,
  ``version`` (unique per stream), ``id`` (uuid), ``type``, ``data`` (the codec's JSON
  bytes, ``bytea``), ``metadata`` (``jsonb`` or NULL), ``recorded_at``;
- ``mediator_head``: one row, the last position given out;
- ``mediator_checkpoints``, ``mediator_snapshots``, ``mediator_outbox``,
  ``mediator_read_models``: the store's other tables (see ``store.py``).

**Commit order.** A ``bigserial`` gives positions in the order transactions *ask* for
them, not the order they *commit*: a tailing reader that saw position 8 would skip a 7
committed just after. Here positions come from the one ``mediator_head`` row, updated
(hence row-locked) by every appending transaction and held until its commit: appending
transactions commit one after the other, in position order, so once a reader sees
position ``p`` no position below ``p`` can still commit. Positions are also gap-free (a
rollback returns them). The cost: concurrent appenders do not share a WAL flush (no group
commit); one appender alone pays nothing more than an update of a hot row.

**Live subscribers** are woken by ``LISTEN/NOTIFY`` (each append notifies
``mediator_events`` when it commits; the LISTEN connection is opened by the first
subscriber that waits) and poll every ``poll_interval`` seconds besides, so a lost
notification (a dropped listener connection) costs latency, never an event.
"""

import asyncio
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import asyncpg  # type: ignore[import-untyped]

from mediator.codec import Codec
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
    encode_metadata,
    encode_value,
)

__all__ = ["PostgresEventStore"]

CHANNEL = "mediator_events"

SCHEMA = """
CREATE TABLE IF NOT EXISTS mediator_events (
    position bigint PRIMARY KEY,
    stream text NOT NULL,
    version integer NOT NULL,
    id uuid NOT NULL,
    type text NOT NULL,
    data bytea NOT NULL,
    metadata jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mediator_events_stream_version UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS mediator_head (
    id integer PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO mediator_head (id, position) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS mediator_checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS mediator_snapshots (
    stream text PRIMARY KEY,
    version integer NOT NULL,
    type text NOT NULL,
    data bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS mediator_outbox (
    position bigint PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS mediator_read_models (
    namespace text NOT NULL,
    key text NOT NULL,
    value jsonb NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""

# One statement, one transaction, one round trip: check the stream's version, take
# positions from the head row (its row lock is held to the commit: see the module
# docstring), insert, notify. $2 NULL: no check. When the check fails nothing is
# written (the head is not updated, no row is inserted) and `v` tells the version seen.
APPEND = """
WITH cur AS (
    SELECT coalesce(max(version), 0) AS v FROM mediator_events WHERE stream = $1
), head AS (
    UPDATE mediator_head SET position = position + cardinality($3::text[])
    FROM cur WHERE id = 1 AND ($2::integer IS NULL OR cur.v = $2::integer)
    RETURNING position - cardinality($3::text[]) AS base, cur.v AS v
), ins AS (
    INSERT INTO mediator_events (position, stream, version, id, type, data, metadata)
    SELECT head.base + e.n, $1, head.v + e.n::integer, gen_random_uuid(), e.t, e.d, $5::jsonb
    FROM head, unnest($3::text[], $4::bytea[]) WITH ORDINALITY AS e(t, d, n)
    RETURNING 1
)
SELECT cur.v, (SELECT count(*) FROM ins), (SELECT pg_notify('""" + CHANNEL + """', '') FROM head)
FROM cur
"""

LOCK_HEAD = "UPDATE mediator_head SET position = position + $1 WHERE id = 1 RETURNING position - $1"

# Inside a transaction that already holds the head row (LOCK_HEAD, statement before):
# its snapshot is fresh, so the version it reads is the committed one.
INSERT_AT = """
WITH cur AS (
    SELECT coalesce(max(version), 0) AS v FROM mediator_events WHERE stream = $1
), ins AS (
    INSERT INTO mediator_events (position, stream, version, id, type, data, metadata)
    SELECT $7::bigint + e.n, $1, cur.v + e.n::integer, e.i, e.t, e.d, e.m
    FROM cur, unnest($3::uuid[], $4::text[], $5::bytea[], $6::jsonb[])
        WITH ORDINALITY AS e(i, t, d, m, n)
    WHERE $2::integer IS NULL OR cur.v = $2::integer
    RETURNING position
)
SELECT cur.v, (SELECT count(*) FROM ins), pg_notify('""" + CHANNEL + """', '')
FROM cur
"""

RELEASE_POSITIONS = "UPDATE mediator_head SET position = position - $1 WHERE id = 1"

VERSION = "SELECT coalesce(max(version), 0) FROM mediator_events WHERE stream = $1"

COLUMNS = "position, stream, version, id::text, type, data, metadata::text, recorded_at"

READ_STREAM = f"""
SELECT {COLUMNS} FROM mediator_events
WHERE stream = $1 AND version > $2 AND version <= coalesce($3::integer, 2147483647)
ORDER BY version LIMIT $4
"""

LOAD_STREAM = """
SELECT type, data FROM mediator_events
WHERE stream = $1 AND version > $2 AND version <= coalesce($3::integer, 2147483647)
ORDER BY version
"""

READ_ALL = f"SELECT {COLUMNS} FROM mediator_events WHERE position > $1 ORDER BY position LIMIT $2"

SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('mediator.eventsourcing schema'))"


def _columns(events: Sequence[NewEvent]) -> Tuple[List[str], List[str], List[bytes], List[Optional[str]]]:
    ids, types, datas, metas = [], [], [], []
    for event in events:
        ids.append(event.id)
        types.append(event.type)
        datas.append(event.data)
        metas.append(event.metadata)
    return ids, types, datas, metas


class _PostgresTransaction(Transaction):
    """A transaction on one pooled connection (``connection``: the asyncpg connection)."""

    store: "PostgresEventStore"

    def __init__(self, store: "PostgresEventStore", connection: Any, transaction: Any) -> None:
        self.store = store
        self._connection = connection
        self._transaction = transaction
        self._exposed = False  # whether user code got the connection or ran its own SQL
        self._done = False

    @property
    def connection(self) -> Any:
        """The asyncpg ``Connection`` this transaction runs on (use ``$1``-style SQL)."""
        self._exposed = True
        return self._connection

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """Run one SQL statement (PostgreSQL, ``$1`` parameters) in this transaction."""
        if not isinstance(sql, str):
            raise TypeError(f"sql must be a str, got {sql!r}")
        self._exposed = True
        return [tuple(row) for row in await self._connection.fetch(sql, *params)]

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: Optional[int]
    ) -> Tuple[int, List[int]]:
        connection = self._connection
        if not events:
            current = await connection.fetchval(VERSION, stream)
            if expected_version is not None and expected_version != current:
                raise ConcurrencyError(stream, expected_version, current)
            return current, []
        count = len(events)
        # Take the head row first: the statement after it reads a fresh snapshot, so the
        # version check sees every committed append (they all take this row too).
        base = await connection.fetchval(LOCK_HEAD, count)
        ids, types, datas, metas = _columns(events)
        current, inserted, _ = await connection.fetchrow(
            INSERT_AT, stream, expected_version, ids, types, datas, metas, base
        )
        if not inserted:
            # Give the positions back, so that a caller that goes on and commits leaves
            # no hole (holes are harmless, but positions stay dense this way).
            await connection.execute(RELEASE_POSITIONS, count)
            raise ConcurrencyError(stream, expected_version, current)
        return current + count, list(range(base + 1, base + count + 1))

    async def checkpoint(self, name: str) -> int:
        position = await self._connection.fetchval(
            "SELECT position FROM mediator_checkpoints WHERE name = $1", name
        )
        return 0 if position is None else position

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._connection.execute(
            "INSERT INTO mediator_checkpoints (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            name,
            position,
        )

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._connection.execute(
            "INSERT INTO mediator_snapshots (stream, version, type, data) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, type = excluded.type, "
            "data = excluded.data WHERE mediator_snapshots.version <= excluded.version",
            snapshot.stream,
            snapshot.version,
            snapshot.type,
            snapshot.data,
        )

    async def add_deliveries(self, positions: Sequence[int]) -> None:
        if positions:
            await self._connection.execute(
                "INSERT INTO mediator_outbox (position) SELECT unnest($1::bigint[]) ON CONFLICT DO NOTHING",
                list(positions),
            )

    async def remove_deliveries(self, positions: Sequence[int]) -> None:
        if positions:
            await self._connection.execute(
                "DELETE FROM mediator_outbox WHERE position = ANY($1::bigint[])", list(positions)
            )

    async def deliveries(self, limit: Optional[int] = None) -> List[int]:
        rows = await self._connection.fetch(
            "SELECT position FROM mediator_outbox ORDER BY position LIMIT $1", limit
        )
        return [row[0] for row in rows]

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        check_name("namespace", namespace)
        check_name("key", key)
        text = await self._connection.fetchval(
            "SELECT value::text FROM mediator_read_models WHERE namespace = $1 AND key = $2", namespace, key
        )
        return default if text is None else json.loads(text)

    async def put(self, namespace: str, key: str, value: Any) -> None:
        check_name("namespace", namespace)
        check_name("key", key)
        await self._connection.execute(
            "INSERT INTO mediator_read_models (namespace, key, value) VALUES ($1, $2, $3::text::jsonb) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            namespace,
            key,
            encode_value(namespace, key, value),
        )

    async def delete(self, namespace: str, key: str) -> None:
        check_name("namespace", namespace)
        check_name("key", key)
        await self._connection.execute(
            "DELETE FROM mediator_read_models WHERE namespace = $1 AND key = $2", namespace, key
        )

    async def items(self, namespace: str) -> List[Tuple[str, Any]]:
        check_name("namespace", namespace)
        rows = await self._connection.fetch(
            "SELECT key, value::text FROM mediator_read_models WHERE namespace = $1 ORDER BY key COLLATE \"C\"",
            namespace,
        )
        return [(key, json.loads(text)) for key, text in rows]

    async def commit(self) -> None:
        if self._done:
            raise EventStoreError("this transaction is already finished")
        try:
            await self._transaction.commit()
        except BaseException:
            await self._finish(failed=True)
            raise
        await self._finish(failed=False)

    async def rollback(self) -> None:
        if self._done:
            return
        try:
            await self._transaction.rollback()
        except Exception:  # a broken connection: the server rolls back on its own
            await self._finish(failed=True)
            return
        await self._finish(failed=False)

    async def _finish(self, failed: bool) -> None:
        self._done = True
        connection, self._connection = self._connection, None
        if connection is not None:
            if failed:
                connection.terminate()  # a connection in an unknown state goes back closed
            elif self._exposed:
                try:  # what user SQL may have left (SET, LISTEN, session locks, cursors)
                    await connection.reset()
                except Exception:
                    connection.terminate()
            await self.store._pool.release(connection)


class PostgresEventStore(EventStore):
    """The event store on PostgreSQL (see the module docstring).

    ``url``: ``postgresql://user:password@host:port/database`` (``postgres://`` too; query
    parameters other than libpq's connection ones become server settings, e.g.
    ``?search_path=events``). Options: ``pool_size`` (connections, default 10),
    ``poll_interval`` (seconds between looks for commits a notification did not announce),
    ``connect_timeout`` (seconds, default 10).
    """

    batch_size = 2000

    def __init__(
        self,
        url: str,
        *,
        codec: Optional[Codec] = None,
        pool_size: int = 10,
        poll_interval: Optional[float] = None,
        connect_timeout: float = 10.0,
    ) -> None:
        EventStore.__init__(self, codec=codec)
        if not isinstance(url, str) or not url.lower().startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a PostgreSQL URL: {url!r} (postgresql://user@host:port/database)")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise TypeError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if poll_interval is not None:
            if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) or poll_interval <= 0:
                raise TypeError(f"poll_interval must be a number of seconds > 0, got {poll_interval!r}")
            self.poll_interval = float(poll_interval)
        self.url = url
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._listener: Any = None
        self._direct: Any = None  # a connection of the store's own statements when it is free
        self._direct_busy = False
        self._listen_task: Optional["asyncio.Future[None]"] = None

    def __repr__(self) -> str:
        return f"<PostgresEventStore {_redact(self.url)}>"

    # -- lifecycle -----------------------------------------------------------------

    async def _open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                reset=_no_reset,
            )
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as error:
            raise EventStoreError(f"cannot connect to PostgreSQL at {_redact(self.url)}: {error}") from error
        try:
            async with self._pool.acquire() as connection:
                async with connection.transaction():
                    await connection.execute(SCHEMA_LOCK)
                    await connection.execute(SCHEMA)
            self._direct = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        except BaseException:
            await self._close()
            raise

    def _notified(self, *args: Any) -> None:
        self._committed()

    async def _wait_for_commit(self, after: int) -> None:
        """Wait for a NOTIFY or ``poll_interval``. The LISTEN connection is opened by the
        first subscriber that waits (a process that only writes keeps none, and its appends
        wake no listener); that first wait returns at once, so that the subscriber reads
        again what committed before LISTEN took effect."""
        task = self._listen_task
        if task is None and not self._closed:
            task = self._listen_task = asyncio.ensure_future(self._listen())
            task.add_done_callback(_retrieve)
        if task is not None and not task.done():
            try:
                await asyncio.shield(task)
            except Exception:  # no listener: the poll alone
                pass
            return
        await EventStore._wait_for_commit(self, after)

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        try:
            await listener.add_listener(CHANNEL, self._notified)
        except BaseException:
            listener.terminate()
            raise
        if self._closed:
            await _quietly_close(listener)
        else:
            self._listener = listener

    async def _run(self, method: str, *args: Any) -> Any:
        """One statement of the store's own, on its direct connection when no other task is
        using it (one round trip, no pool acquire/release), else on a pooled one. A
        connection that fails otherwise than by an SQL error (cancellation, I/O) is dropped."""
        connection = self._direct
        if connection is None or self._direct_busy:
            return await getattr(self._pool, method)(*args)
        self._direct_busy = True
        try:
            return await getattr(connection, method)(*args)
        except asyncpg.PostgresError:
            raise
        except BaseException:
            self._direct = None
            connection.terminate()
            raise
        finally:
            self._direct_busy = False

    async def _close(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.terminate() if self._direct_busy else await _quietly_close(direct)
        task, self._listen_task = self._listen_task, None
        if task is not None and not task.done():
            task.cancel()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                await listener.close(timeout=5)
            except Exception:
                listener.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (Exception, asyncio.TimeoutError):
                pool.terminate()

    # -- writing -------------------------------------------------------------------

    async def _begin(self) -> Transaction:
        connection = await self._pool.acquire()
        try:
            transaction = connection.transaction()
            await transaction.start()
        except BaseException:
            await self._pool.release(connection)
            raise
        return _PostgresTransaction(self, connection, transaction)

    async def append(
        self,
        stream: str,
        events: Iterable[Any],
        *,
        expected_version: Optional[int],
        metadata: Optional[Dict[str, Any]] = None,
    ) -> int:
        """As ``EventStore.append``, in one statement (one round trip, its own transaction;
        the events' ids are made by the server, ``gen_random_uuid()``)."""
        check_stream(stream)
        check_expected(expected_version)
        self._check_not_in_transaction()
        if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
            raise TypeError(f"events must be an iterable of event objects, got {events!r}")
        meta = encode_metadata(metadata)
        encode = self.codec.encode
        types, datas = [], []
        for event in events:
            type_string, data = encode(event)
            types.append(type_string)
            datas.append(data)
        if not types:
            return await EventStore.append(self, stream, (), expected_version=expected_version)
        if not self._opened or self._closed:
            await self._ready()
        while True:
            try:
                current, inserted, _ = await self._run("fetchrow", APPEND, stream, expected_version, types, datas, meta)
            except asyncpg.UniqueViolationError:
                # A concurrent append committed after this statement's snapshot was taken:
                # with no expected version, try again on a fresh snapshot.
                if expected_version is None:
                    continue
                raise ConcurrencyError(stream, expected_version, await self._version(stream)) from None
            break
        if not inserted:
            # The check failed; report the version as it is now (the statement's snapshot
            # may predate a concurrent commit).
            raise ConcurrencyError(stream, expected_version, await self._version(stream))
        self._committed()
        return current + inserted

    async def _forget_deliveries(self, positions: Sequence[int]) -> None:
        """Take published positions out of the outbox without waiting for the WAL flush
        (``synchronous_commit = off`` for this one transaction): a commit lost to a crash
        only publishes those events again (at least once), and the outbox's bookkeeping no
        longer costs a disk flush per save."""
        if not positions:
            return
        self._check_not_in_transaction()
        if not self._opened or self._closed:
            await self._ready()
        async with self._pool.acquire() as connection:
            async with connection.transaction():
                await connection.execute("SET LOCAL synchronous_commit = off")
                await connection.execute(
                    "DELETE FROM mediator_outbox WHERE position = ANY($1::bigint[])", list(positions)
                )

    # -- reading -------------------------------------------------------------------

    async def _read_stream(self, stream: str, after: int, to_version: Optional[int], limit: int) -> List[Row]:
        return await self._run("fetch", READ_STREAM, stream, after, to_version, limit)

    async def _load_events(self, stream: str, after: int, to_version: Optional[int]) -> List[Any]:
        """The decoded events of ``stream`` (an aggregate's load: two columns, one query)."""
        if not self._opened or self._closed:
            await self._ready()
        decode = self.codec.decode
        rows = await self._run("fetch", LOAD_STREAM, stream, after, to_version)
        return [decode(type_string, data) for type_string, data in rows]

    async def _read_all(self, after: int, limit: Optional[int]) -> List[Row]:
        return await self._run("fetch", READ_ALL, after, limit)

    async def _version(self, stream: str) -> int:
        return await self._run("fetchval", VERSION, stream)

    async def _load_snapshot(self, stream: str) -> Optional[Snapshot]:
        row = await self._pool.fetchrow(
            "SELECT stream, version, type, data FROM mediator_snapshots WHERE stream = $1", stream
        )
        return None if row is None else Snapshot(*row)


def _retrieve(task: "asyncio.Future[None]") -> None:
    """Mark a finished LISTEN task's error as seen (the subscriber then polls)."""
    if not task.cancelled():
        task.exception()


async def _quietly_close(connection: Any) -> None:
    try:
        await connection.close(timeout=5)
    except Exception:
        connection.terminate()


async def _no_reset(connection: Any) -> None:
    """The pool's reset of a released connection: nothing. asyncpg's default sends a reset
    query (one more round trip per operation); the store's own statements leave no session
    state, and a transaction whose connection user code touched resets it before release."""


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
