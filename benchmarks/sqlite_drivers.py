"""The SQLite append path, by hand: aiosqlite (one trip to its thread per statement) against
this store's stdlib sqlite3 on one executor thread (one trip per append). Needs aiosqlite.

    python benchmarks/sqlite_drivers.py [N transactions] [events per transaction] [FULL|NORMAL]
"""
import asyncio, os, sys, time, tempfile, uuid
import aiosqlite
from mediator.eventsourcing.sqlite import SCHEMA, _INSERT, _VERSION

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 1
SYNC = sys.argv[3] if len(sys.argv) > 3 else "FULL"
data = b'{"amount":10}'

async def with_aiosqlite(path):
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL"); await db.execute(f"PRAGMA synchronous={SYNC}")
    for st in SCHEMA.split(";"):
        if st.strip(): await db.execute(st)
    t = time.perf_counter()
    for i in range(N):
        s = f"s{i}"
        await db.execute("BEGIN IMMEDIATE")
        cur = await db.execute(_VERSION, (s,)); v = (await cur.fetchone())[0] or 0
        await db.executemany(_INSERT, [(s, v + j + 1, str(uuid.uuid4()), "T", data, None, time.time()) for j in range(BATCH)])
        await db.execute("COMMIT")
    el = time.perf_counter() - t
    await db.close()
    return el

async def with_store(path):
    from mediator.eventsourcing import open_store
    from dataclasses import dataclass
    store = open_store("sqlite:///" + path, synchronous=SYNC)
    @dataclass
    class E:
        amount: int
    async with store:
        evs = [E(10)] * BATCH
        t = time.perf_counter()
        for i in range(N):
            await store.append(f"s{i}", evs, expected_version=0)
        return time.perf_counter() - t

async def main():
    for name, fn in (("aiosqlite", with_aiosqlite), ("sqlite3+executor (store.append)", with_store)) * 2:
        d = tempfile.mkdtemp()
        el = await fn(os.path.join(d, "b.db"))
        print(f"{name:35s} batch={BATCH} sync={SYNC}: {N*BATCH/el:10.0f} events/s  {el/N*1e6:7.0f} us/txn")
asyncio.run(main())
