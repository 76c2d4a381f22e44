"""The event store against `eventsourcing` 9.5.6 and a raw driver loop, on SQLite and PostgreSQL.

    python benchmarks/store.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--rounds 3]

Needs ``pip install -r benchmarks/requirements-store.txt`` (``make bench-store`` does it).
One run, one process, the same SQLite file type (WAL, ``synchronous=FULL``, a new file per
subject in one temporary folder) and the same PostgreSQL server (a database made for the
run, dropped at its end). Subjects:

- ``raw``: the floor: ``sqlite3`` / ``asyncpg`` writing the same rows to a table of the
  same shape, in the least work a driver loop can do (one prepared ``INSERT`` per
  transaction, autocommit on PostgreSQL; 100 rows as one ``executemany`` / one ``unnest``
  statement; ids by ``uuid4()`` on SQLite, ``gen_random_uuid()`` on PostgreSQL, as the
  store makes them), events encoded by ``msgspec``, positions and versions known to the
  loop (no version check, no lock); reading: the rows fetched in one query (``type, data``
  for a load, every column for the log), each payload decoded by msgspec into the event
  class.
- ``mediator``: this store, ``store.append(...)``; ``Repository.get``; ``store.subscribe``.
  ``mediator (Repository.save)`` appends through an aggregate and ``Repository.save``.
- ``eventsourcing``: 9.5.6's ``Application``: ``app.save(aggregate)`` after triggering the
  events; ``app.repository.get``; ``recorder.select_notifications`` +
  ``mapper.to_domain_event`` (what its processing loop does per event).

Scenarios (events/s: the best of ``--rounds`` rounds, each round timing every subject in
turn, raw loop and this store back to back; the ratio columns are the median over rounds
of the ratio within a round, which a busy machine disturbs less than a ratio of bests):
``append_1`` (1,000 transactions of 1 event, one stream, each version-checked),
``append_100`` (100 transactions of 100 events), ``load_10k`` (an aggregate of 10,000
events rebuilt), ``read_all`` (the log read and decoded as a subscriber does: the first 20,000 events of the log, for every subject).
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import asyncpg  # noqa: E402
import msgspec  # noqa: E402

from mediator.eventsourcing import Aggregate, Repository, applies, open_store  # noqa: E402

APPEND_1 = 1000
APPEND_100 = 100
LOAD = 10_000
READ_ALL = 20_000  # events read by read_all: the first of the log, the same count for every subject


# -- the event, as each subject defines it ----------------------------------------


@dataclass(frozen=True)
class Deposited:
    amount: int
    note: str


def event(n: int) -> Deposited:
    return Deposited(n, "salary")


class Account(Aggregate):
    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance = getattr(self, "balance", 0) + event.amount


_ES_CLASSES: List[Any] = []


def es_classes() -> Tuple[Any, Any]:
    """eventsourcing's aggregate (defined once: it refuses a second class under a topic)."""
    if _ES_CLASSES:
        return _ES_CLASSES[0], _ES_CLASSES[1]
    from eventsourcing.domain import Aggregate as EsAggregate, event as es_event

    class EsAccount(EsAggregate):
        @es_event("Opened")
        def __init__(self) -> None:
            self.balance = 0

        @es_event("Deposited")
        def deposit(self, amount: int, note: str) -> None:
            self.balance += amount

    _ES_CLASSES[:] = [EsAccount, es_event]
    return EsAccount, es_event


# -- timing ------------------------------------------------------------------------

Result = Dict[str, Dict[str, Dict[str, float]]]  # backend -> scenario -> subject -> events/s


ROUND_RATES: Dict[Tuple[str, str, str], List[float]] = {}  # every round's rate, in order


def note(results: Result, backend: str, scenario: str, subject: str, events: int, seconds: float) -> None:
    rate = events / seconds
    cell = results.setdefault(backend, {}).setdefault(scenario, {})
    cell[subject] = max(cell.get(subject, 0.0), rate)
    ROUND_RATES.setdefault((backend, scenario, subject), []).append(rate)


def paired_ratio(backend: str, scenario: str, subject: str, baseline: str) -> Optional[float]:
    """The median over rounds of baseline rate / subject rate, each pair timed back to back."""
    ours, base = ROUND_RATES.get((backend, scenario, subject)), ROUND_RATES.get((backend, scenario, baseline))
    if not ours or not base:
        return None
    ratios = sorted(b / o for o, b in zip(ours, base))
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


# -- raw loops ------------------------------------------------------------------------

RAW_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL, id TEXT NOT NULL,
    type TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT, recorded_at REAL NOT NULL,
    UNIQUE (stream, version))
"""
RAW_SQLITE_INSERT = "INSERT INTO events (stream, version, id, type, data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
RAW_TYPE = "bench.Deposited"


class RawSQLite:
    name = "raw sqlite3"

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(RAW_SQLITE_SCHEMA)
        self.encode = msgspec.json.Encoder().encode
        self.decoder = msgspec.json.Decoder(Deposited)
        self.versions: Dict[str, int] = {}

    def append(self, stream: str, events: List[Deposited]) -> None:
        version = self.versions.get(stream, 0)
        now = time.time()
        rows = []
        for e in events:
            version += 1
            rows.append((stream, version, str(uuid.uuid4()), RAW_TYPE, self.encode(e), None, now))
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_SQLITE_INSERT, rows)
        conn.execute("COMMIT")
        self.versions[stream] = version

    def load(self, stream: str) -> List[Any]:
        decode = self.decoder.decode
        rows = self.conn.execute("SELECT type, data FROM events WHERE stream = ? ORDER BY version", (stream,)).fetchall()
        return [decode(r[1]) for r in rows]

    def read_all(self) -> List[Any]:
        decode = self.decoder.decode
        rows = self.conn.execute(
            "SELECT position, stream, version, id, type, data, metadata, recorded_at FROM events "
            "ORDER BY position LIMIT ?", (READ_ALL,)
        ).fetchall()
        return [(r[0], r[2], decode(r[5])) for r in rows]


RAW_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_events (
    position bigint PRIMARY KEY, stream text NOT NULL, version integer NOT NULL, id uuid NOT NULL,
    type text NOT NULL, data bytea NOT NULL, metadata jsonb, recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, version))
"""
RAW_PG_INSERT_1 = (
    "INSERT INTO raw_events (position, stream, version, id, type, data) VALUES ($1, $2, $3, gen_random_uuid(), $4, $5)"
)
RAW_PG_INSERT_N = """
INSERT INTO raw_events (position, stream, version, id, type, data)
SELECT $1::bigint + e.n, $2, $3::integer + e.n::integer, gen_random_uuid(), $4, e.d
FROM unnest($5::bytea[]) WITH ORDINALITY AS e(d, n)
"""
RAW_PG_SELECT = "SELECT position, stream, version, id::text, type, data, metadata::text, recorded_at FROM raw_events"


class RawAsyncpg:
    name = "raw asyncpg"

    async def open(self, url: str) -> None:
        self.conn = await asyncpg.connect(url)
        await self.conn.execute(RAW_PG_SCHEMA)
        self.insert_1 = await self.conn.prepare(RAW_PG_INSERT_1)
        self.insert_n = await self.conn.prepare(RAW_PG_INSERT_N)
        self.load_stmt = await self.conn.prepare("SELECT type, data FROM raw_events WHERE stream = $1 ORDER BY version")
        self.all_stmt = await self.conn.prepare(RAW_PG_SELECT + " ORDER BY position LIMIT $1")
        self.encode = msgspec.json.Encoder().encode
        self.decoder = msgspec.json.Decoder(Deposited)
        self.versions: Dict[str, int] = {}
        self.position = 0

    async def append(self, stream: str, events: List[Deposited]) -> None:
        version = self.versions.get(stream, 0)
        encode = self.encode
        if len(events) == 1:
            await self.insert_1.fetch(self.position + 1, stream, version + 1, RAW_TYPE, encode(events[0]))
        else:
            await self.insert_n.fetch(self.position, stream, version, RAW_TYPE, [encode(e) for e in events])
        self.position += len(events)
        self.versions[stream] = version + len(events)

    async def load(self, stream: str) -> List[Any]:
        decode = self.decoder.decode
        return [decode(r[1]) for r in await self.load_stmt.fetch(stream)]

    async def read_all(self) -> List[Any]:
        decode = self.decoder.decode
        return [(r[0], r[2], decode(r[5])) for r in await self.all_stmt.fetch(READ_ALL)]

    async def close(self) -> None:
        await self.conn.close()


# -- the subjects: each appends, loads and reads the same way ------------------------------


async def maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


class Subject:
    """One library on one backend: ``append(stream, events)``, ``load(id)``, ``read_all()``."""

    label = ""
    backend = ""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def new_stream(self) -> Any:
        return f"s-{uuid.uuid4()}"


class RawSQLiteSubject(Subject):
    label = "raw"
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.raw = RawSQLite(path)

    def append(self, stream: str, events: List[Deposited]) -> None:
        self.raw.append(stream, events)

    def load(self, stream: str) -> int:
        return len(self.raw.load(stream))

    def read_all(self) -> int:
        return len(self.raw.read_all())

    async def close(self) -> None:
        self.raw.conn.close()


class RawAsyncpgSubject(Subject):
    label = "raw"
    backend = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw = RawAsyncpg()

    async def open(self) -> None:
        await self.raw.open(self.url)

    async def append(self, stream: str, events: List[Deposited]) -> None:
        await self.raw.append(stream, events)

    async def load(self, stream: str) -> int:
        return len(await self.raw.load(stream))

    async def read_all(self) -> int:
        return len(await self.raw.read_all())

    async def close(self) -> None:
        await self.raw.close()


class MediatorSubject(Subject):
    """This store: ``store.append``; ``Repository.get``; ``store.subscribe``."""

    label = "mediator"

    def __init__(self, url: str, backend: str) -> None:
        self.url, self.backend = url, backend
        self.versions: Dict[str, int] = {}

    async def open(self) -> None:
        self.store = open_store(self.url)
        await self.store.open()
        self.repo = Repository(self.store)

    async def append(self, stream: str, events: List[Deposited]) -> None:
        version = self.versions.get(stream, 0)
        self.versions[stream] = await self.store.append(stream, events, expected_version=version)

    async def load(self, stream: str) -> int:
        return (await self.repo.get(Account, stream)).version

    async def read_all(self) -> int:
        count = 0
        async for _ in self.store.subscribe(after=0):
            count += 1
            if count == READ_ALL:
                break
        return count

    async def close(self) -> None:
        await self.store.close()


class MediatorRepositorySubject(MediatorSubject):
    """This store through aggregates: ``account.record(...)`` then ``Repository.save``."""

    label = "mediator (Repository.save)"

    def new_stream(self) -> Any:
        return Account()

    async def append(self, account: Account, events: List[Deposited]) -> None:  # type: ignore[override]
        for e in events:
            account.record(e)
        await self.repo.save(account)


class EventsourcingSubject(Subject):
    """eventsourcing 9.5.6: ``aggregate.deposit(...)`` then ``app.save``; ``app.repository.get``;
    ``select_notifications`` + ``mapper.to_domain_event``."""

    label = "eventsourcing 9.5.6"

    def __init__(self, env: Dict[str, str], backend: str) -> None:
        self.env, self.backend = env, backend

    async def open(self) -> None:
        from eventsourcing.application import Application

        self.app = Application(env=self.env)
        self.account_cls = es_classes()[0]

    def new_stream(self) -> Any:
        account = self.account_cls()
        self.app.save(account)  # its creation event, before the timing
        return account

    def append(self, account: Any, events: List[Deposited]) -> None:
        for e in events:
            account.deposit(e.amount, e.note)
        self.app.save(account)

    def load(self, account: Any) -> int:
        return self.app.repository.get(account.id).version  # type: ignore[no-any-return]

    def read_all(self) -> int:
        recorder, mapper = self.app.recorder, self.app.mapper
        count, start_id = 0, 1
        while count < READ_ALL:
            notifications = recorder.select_notifications(start=start_id, limit=min(500, READ_ALL - count))
            for notification in notifications:
                mapper.to_domain_event(notification)
            count += len(notifications)
            start_id = notifications[-1].id + 1
        return count

    async def close(self) -> None:
        self.app.close()


async def measure(subjects: List[Subject], rounds: int) -> Result:
    """Every scenario, round by round, each round timing every subject in turn."""
    results: Result = {}
    for subject in subjects:
        await subject.open()
    # the aggregate of 10,000 events each subject loads (and the start of its log)
    big = {}
    for subject in subjects:
        if isinstance(subject, MediatorRepositorySubject):
            continue
        stream = subject.new_stream()
        for n in range(LOAD // 1000):
            count = 1000 - 1 if n == 0 and isinstance(subject, EventsourcingSubject) else 1000
            await maybe(subject.append(stream, [event(n * 1000 + k) for k in range(count)]))
        big[subject] = stream
    for _ in range(rounds):
        for subject in subjects:
            stream = subject.new_stream()
            batch = [event(0)]
            start = time.perf_counter()
            for n in range(APPEND_1):
                await maybe(subject.append(stream, batch))
            note(results, subject.backend, "append_1", subject.label, APPEND_1, time.perf_counter() - start)
        for subject in subjects:
            stream = subject.new_stream()
            batches = [[event(n * 100 + k) for k in range(100)] for n in range(APPEND_100)]
            start = time.perf_counter()
            for batch in batches:
                await maybe(subject.append(stream, batch))
            note(results, subject.backend, "append_100", subject.label, APPEND_100 * 100, time.perf_counter() - start)
        for _ in range(3):
            for subject, stream in big.items():
                start = time.perf_counter()
                loaded = await maybe(subject.load(stream))
                note(results, subject.backend, "load_10k", subject.label, LOAD, time.perf_counter() - start)
                assert loaded == LOAD, (subject.label, loaded)
        for subject in big:
            start = time.perf_counter()
            count = await maybe(subject.read_all())
            note(results, subject.backend, "read_all", subject.label, count, time.perf_counter() - start)
            assert count == READ_ALL, (subject.label, count)
    for subject in subjects:
        await subject.close()
    return results


CONCURRENT_WRITERS, CONCURRENT_EACH = 8, 250


async def measure_concurrent(pg_url: str, rounds: int, results: Result) -> None:
    """The cost of the commit order on PostgreSQL: 8 writers appending 1 event per
    transaction at once, each to its own stream. ``raw`` inserts into a ``bigserial`` table
    (no order: a tailing reader would skip events); this store serializes its appends'
    commits on the head row (a reader never skips)."""
    conn = await asyncpg.connect(pg_url)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS raw_serial (position bigserial PRIMARY KEY, stream text NOT NULL, "
        "version integer NOT NULL, id uuid NOT NULL, type text NOT NULL, data bytea NOT NULL, metadata jsonb, "
        "recorded_at timestamptz NOT NULL DEFAULT now(), UNIQUE (stream, version))"
    )
    await conn.close()
    raws = [await asyncpg.connect(pg_url) for _ in range(CONCURRENT_WRITERS)]
    store = open_store(pg_url, pool_size=CONCURRENT_WRITERS)
    await store.open()
    encode = msgspec.json.Encoder().encode
    insert = "INSERT INTO raw_serial (stream, version, id, type, data) VALUES ($1, $2, gen_random_uuid(), $3, $4)"

    async def raw_writer(conn: Any, stream: str) -> None:
        for n in range(CONCURRENT_EACH):
            await conn.execute(insert, stream, n + 1, RAW_TYPE, encode(event(n)))

    async def our_writer(stream: str) -> None:
        for n in range(CONCURRENT_EACH):
            await store.append(stream, [event(n)], expected_version=n)

    total = CONCURRENT_WRITERS * CONCURRENT_EACH
    for _ in range(rounds):
        start = time.perf_counter()
        await asyncio.gather(*(raw_writer(c, f"c-{uuid.uuid4()}") for c in raws))
        note(results, "postgresql", "append_1 x8 writers", "raw", total, time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(our_writer(f"c-{uuid.uuid4()}") for _ in range(CONCURRENT_WRITERS)))
        note(results, "postgresql", "append_1 x8 writers", "mediator", total, time.perf_counter() - start)
    for c in raws:
        await c.close()
    await store.close()


# -- the run -----------------------------------------------------------------------------


def pg_parts(url: str) -> Dict[str, str]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": str(parsed.port or 5432),
        "user": parsed.username or "postgres",
        "password": parsed.password or "",
    }


async def make_database(admin_url: str, name: str, drop: bool = False) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if drop:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


SUBJECTS = ("raw", "mediator", "eventsourcing")


def run(admin_url: str, rounds: int, which: Tuple[str, ...]) -> Result:
    folder = tempfile.mkdtemp(prefix="mediator-bench-store-")
    database = "mediator_bench_" + uuid.uuid4().hex[:8]
    asyncio.run(make_database(admin_url, database))
    parts = pg_parts(admin_url)
    password = ":" + parts["password"] if parts["password"] else ""
    pg_url = f"postgresql://{parts['user']}{password}@{parts['host']}:{parts['port']}/{database}"
    es_pg = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": database,
        "POSTGRES_HOST": parts["host"],
        "POSTGRES_PORT": parts["port"],
        "POSTGRES_USER": parts["user"],
        "POSTGRES_PASSWORD": parts["password"],
    }
    subjects: List[Subject] = []  # per backend: raw and this store back to back (paired ratios)
    if "raw" in which:
        subjects.append(RawSQLiteSubject(os.path.join(folder, "raw.db")))
    if "mediator" in which:
        subjects.append(MediatorSubject(f"sqlite:///{folder}/mediator.db", "sqlite"))
    if "eventsourcing" in which:
        es_sqlite = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(folder, "es.db")}
        subjects.append(EventsourcingSubject(es_sqlite, "sqlite"))
    if "mediator" in which:
        subjects.append(MediatorRepositorySubject(f"sqlite:///{folder}/mediator-repo.db", "sqlite"))
    if "raw" in which:
        subjects.append(RawAsyncpgSubject(pg_url))
    if "mediator" in which:
        subjects.append(MediatorSubject(pg_url, "postgresql"))
    if "eventsourcing" in which:
        subjects.append(EventsourcingSubject(es_pg, "postgresql"))
    if "mediator" in which:
        subjects.append(MediatorRepositorySubject(pg_url + "?search_path=repo", "postgresql"))
    try:
        if "mediator" in which:
            asyncio.run(make_schema(pg_url, "repo"))
        results = asyncio.run(measure(subjects, rounds))
        if "raw" in which and "mediator" in which:
            asyncio.run(measure_concurrent(pg_url, rounds, results))
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        asyncio.run(make_database(admin_url, database, drop=True))


async def make_schema(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()


SCENARIOS = ("append_1", "append_100", "load_10k", "read_all")
TARGETS = {"append_1": 1.3, "append_100": 1.3, "load_10k": 1.5, "read_all": 1.5}


def table(results: Result) -> str:
    lines = [
        "| backend | scenario | raw loop | mediator | mediator (Repository.save) | eventsourcing 9.5.6 | mediator time / raw (target) | mediator / eventsourcing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in ("sqlite", "postgresql"):
        for scenario in SCENARIOS:
            cell = results.get(backend, {}).get(scenario, {})
            raw, ours = cell.get("raw"), cell.get("mediator")
            repo, es = cell.get("mediator (Repository.save)"), cell.get("eventsourcing 9.5.6")

            def fmt(rate: Optional[float]) -> str:
                if rate is None:
                    return "-"
                if scenario == "load_10k":
                    return f"{LOAD / rate * 1e3:.1f} ms"
                return f"{rate / 1e3:.1f}k/s"

            if raw and ours:
                ratio = paired_ratio(backend, scenario, "mediator", "raw") or raw / ours
                verdict = "ok" if ratio <= TARGETS[scenario] else "MISS"
                vs_raw = f"{ratio:.2f}x (<= {TARGETS[scenario]}) {verdict}"
            else:
                vs_raw = "-"
            es_ratio = paired_ratio(backend, scenario, "eventsourcing 9.5.6", "mediator")
            vs_es = f"{es_ratio:.1f}x faster" if es_ratio else "-"
            lines.append(
                f"| {backend} | {scenario} | {fmt(raw)} | {fmt(ours)} | {fmt(repo)} | {fmt(es)} | {vs_raw} | {vs_es} |"
            )
    cell = results.get("postgresql", {}).get("append_1 x8 writers")
    if cell and "raw" in cell and "mediator" in cell:
        lines.append(
            f"| postgresql | append_1, 8 writers at once | {cell['raw'] / 1e3:.1f}k/s (bigserial, unordered) | "
            f"{cell['mediator'] / 1e3:.1f}k/s | - | - | {cell['raw'] / cell['mediator']:.2f}x (the cost of commit order) | - |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("MEDIATOR_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(SUBJECTS), help="comma-separated subjects: raw,mediator,eventsourcing")
    parser.add_argument("--json", help="also write the raw results (events/s) to this file")
    args = parser.parse_args()
    import mediator

    which = tuple(s for s in args.only.split(",") if s)
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{'compiled' if mediator.COMPILED else 'pure'} engine, {platform.machine()}, {os.cpu_count()} cores, "
        f"SQLite {sqlite3.sqlite_version}, asyncpg {asyncpg.__version__}, msgspec {msgspec.__version__}",
        flush=True,
    )
    results = run(args.pg, args.rounds, which)
    print(table(results))
    if args.json:
        rounds = {"/".join(key): rates for key, rates in ROUND_RATES.items()}
        Path(args.json).write_text(json.dumps({"best": results, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
