"""End-to-end throughput of event transports on the same Redis and NATS JetStream.

    python benchmarks/transport.py --python .venv/bin/python [--events 20000] [--repeat 3]

Every row publishes ``--events`` events of about 150 bytes and consumes them with one
worker (one consumer, a trivial handler that counts), every message acknowledged: the run
ends when the handler has seen every event *and* the broker reports nothing pending for the
group (Redis: XPENDING; JetStream: the consumer's ack-pending and pending counts), so an
acknowledgement still in a buffer is not counted as done. Publisher and worker share one
process and one event loop, started worker first, so a row's rate is what one core moves
end to end. Then ``--latency`` single publishes, each awaited alone while the worker runs,
give the publish latency (p50, p99: until the broker has the message durably, the XADD
reply or the JetStream PubAck).

Rows:

* ``redis raw``: the floor, redis-py with hiredis: pipelined XADD (100 a round trip),
  XREADGROUP COUNT 100, one XACK per batch, the payload left undecoded.
* ``redis faststream``: FastStream (pinned in ``requirements-transport.txt``, its own
  virtualenv) with a consumer-group ``StreamSub`` (max_records=100) that acknowledges
  after the handler (``AckPolicy.ACK``); publishes gathered 100 at a time.
* ``redis mediator``: this project's Redis transport and ``Worker`` (concurrency 64),
  ``transport.publish`` gathered 100 at a time (the transport pipelines the publishes
  issued in one loop iteration).
* ``nats raw``: the floor, nats-py: JetStream publishes gathered 100 at a time (each
  awaits its PubAck), a durable pull consumer, fetch(100), ``ack()`` each.
* ``nats faststream``: FastStream's JetStream pull subscriber (``PullSub(batch_size=100)``,
  durable, ``AckPolicy.ACK``).
* ``nats mediator``: this project's JetStream transport and ``Worker``, publishes as above.
* ``… mediator batch``: the same, publishing with ``transport.publish_many`` 100 at a time.

Each row runs in a fresh process, rounds interleaved (every row once, then again), best of
``--repeat`` for the rate, median for the latencies. "CPU µs/message" is the CPU time
(user + system) the client process spent per event during the timed part, the least of
the rounds: it moves much less than the rate when other work shares the machine (the
broker's own CPU is not in it). Stream names carry a uuid and are
deleted afterwards. This file is both the driver and the worker (``--worker ROW``).
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUIREMENTS = HERE / "requirements-transport.txt"

CHUNK = 100  # publishes per pipeline / gather, events per fetch

ROWS: Dict[str, str] = {  # row -> interpreter ("ours" or "faststream")
    "redis raw": "ours",
    "redis faststream": "faststream",
    "redis mediator": "ours",
    "redis mediator batch": "ours",
    "nats raw": "ours",
    "nats faststream": "faststream",
    "nats mediator": "ours",
    "nats mediator batch": "ours",
}


def event_fields(i: int) -> Dict[str, Any]:
    """The benchmark's event: about 150 bytes of JSON."""
    return {
        "order_id": i,
        "customer": "customer-0000042",
        "sku": "SKU-12345-XL-BLUE",
        "quantity": 3,
        "unit_price": "19.99",
        "currency": "EUR",
        "note": "leave at the door",
    }


PAYLOAD = json.dumps(event_fields(1234567), separators=(",", ":")).encode()


class Done:
    """Counts handled events and wakes the waiter at the target."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.event = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.event.set()

    def hits(self, n: int) -> None:
        self.count += n
        if self.count >= self.target:
            self.event.set()

    async def wait(self, target: int) -> None:
        self.target = target
        if self.count < target:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 300)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_row(
    n: int,
    latency_n: int,
    done: Done,
    publish_chunk: Callable[[int, int], Awaitable[Any]],
    publish_one: Callable[[int], Awaitable[Any]],
    pending: Callable[[], Awaitable[int]],
) -> Dict[str, float]:
    """Time ``n`` events end to end, then ``latency_n`` single publishes."""
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for first in range(0, n, CHUNK):
        await publish_chunk(first, min(CHUNK, n - first))
    published = time.perf_counter()
    await done.wait(n)
    while await pending():
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime
    latencies = []
    for i in range(latency_n):
        t0 = time.perf_counter()
        await publish_one(n + i)
        latencies.append(time.perf_counter() - t0)
    await done.wait(n + latency_n)
    return {
        "rate": n / elapsed,
        "publish_rate": n / (published - start),
        "cpu_us": cpu_seconds / n * 1e6,
        "p50_us": percentile(latencies, 0.50) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
    }


# -- Redis ----------------------------------------------------------------------------


async def redis_raw(args: argparse.Namespace) -> Dict[str, float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(args.redis_url)
    stream, group = f"bench-raw-{uuid.uuid4().hex}", "g"
    await client.xgroup_create(stream, group, id="$", mkstream=True)
    done = Done()
    stopping = False

    async def consume() -> None:
        while not stopping:
            reply = await client.xreadgroup(group, "c", {stream: ">"}, count=CHUNK, block=100)
            if not reply:
                continue
            ids = []
            for message_id, fields in reply[0][1]:
                fields[b"data"]  # the trivial handler
                ids.append(message_id)
            await client.xack(stream, group, *ids)
            done.hits(len(ids))

    async def publish_chunk(first: int, count: int) -> None:
        pipe = client.pipeline(transaction=False)
        for _ in range(count):
            pipe.xadd(stream, {"type": "OrderPlaced", "data": PAYLOAD})
        await pipe.execute()

    async def publish_one(i: int) -> None:
        await client.xadd(stream, {"type": "OrderPlaced", "data": PAYLOAD})

    async def pending() -> int:
        return int((await client.xpending(stream, group))["pending"])

    task = asyncio.ensure_future(consume())
    try:
        return await run_row(args.events, args.latency, done, publish_chunk, publish_one, pending)
    finally:
        stopping = True
        await task
        await client.delete(stream)
        await client.aclose()


async def redis_faststream(args: argparse.Namespace) -> Dict[str, float]:
    import redis.asyncio as aioredis
    from faststream import AckPolicy
    from faststream.redis import RedisBroker, StreamSub

    stream, group = f"bench-fs-{uuid.uuid4().hex}", "g"
    broker = RedisBroker(args.redis_url, logger=None, max_connections=2 * CHUNK)
    done = Done()

    @broker.subscriber(
        stream=StreamSub(stream, group=group, consumer="c", max_records=CHUNK),
        ack_policy=AckPolicy.ACK,
    )
    async def handle(body: dict) -> None:
        done.hit()

    await broker.start()
    probe = aioredis.Redis.from_url(args.redis_url)

    async def publish_chunk(first: int, count: int) -> None:
        await asyncio.gather(
            *(broker.publish(event_fields(first + i), stream=stream) for i in range(count))
        )

    async def publish_one(i: int) -> None:
        await broker.publish(event_fields(i), stream=stream)

    async def pending() -> int:
        return int((await probe.xpending(stream, group))["pending"])

    try:
        return await run_row(args.events, args.latency, done, publish_chunk, publish_one, pending)
    finally:
        await broker.stop()
        await probe.delete(stream)
        await probe.aclose()


# -- NATS JetStream -------------------------------------------------------------------


async def nats_raw(args: argparse.Namespace) -> Dict[str, float]:
    import nats
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    stream = f"bench-raw-{uuid.uuid4().hex}"
    subject = f"{stream}.events"
    await js.add_stream(name=stream, subjects=[subject])
    sub = await js.pull_subscribe(
        subject,
        durable="g",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW),
    )
    done = Done()
    stopping = False

    async def consume() -> None:
        while not stopping:
            try:
                messages = await sub.fetch(CHUNK, timeout=0.1)
            except (NatsTimeout, asyncio.TimeoutError):  # nats-py raises either
                continue
            for message in messages:
                message.data  # the trivial handler
                await message.ack()
            done.hits(len(messages))

    async def publish_chunk(first: int, count: int) -> None:
        await asyncio.gather(*(js.publish(subject, PAYLOAD) for _ in range(count)))

    async def publish_one(i: int) -> None:
        await js.publish(subject, PAYLOAD)

    async def pending() -> int:
        info = await js.consumer_info(stream, "g")
        return int(info.num_ack_pending + info.num_pending)

    task = asyncio.ensure_future(consume())
    try:
        return await run_row(args.events, args.latency, done, publish_chunk, publish_one, pending)
    finally:
        stopping = True
        await task
        await js.delete_stream(stream)
        await nc.close()


async def nats_faststream(args: argparse.Namespace) -> Dict[str, float]:
    import nats
    from faststream import AckPolicy
    from faststream.nats import JStream, NatsBroker, PullSub
    from nats.js.api import DeliverPolicy

    stream = f"bench-fs-{uuid.uuid4().hex}"
    subject = f"{stream}.events"
    broker = NatsBroker(args.nats_url, logger=None)
    done = Done()

    @broker.subscriber(
        subject,
        stream=JStream(stream, subjects=[subject]),
        durable="g",
        pull_sub=PullSub(batch_size=CHUNK, timeout=0.1),
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.ACK,
    )
    async def handle(body: dict) -> None:
        done.hit()

    await broker.start()
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()

    async def publish_chunk(first: int, count: int) -> None:
        await asyncio.gather(
            *(broker.publish(event_fields(first + i), subject, stream=stream) for i in range(count))
        )

    async def publish_one(i: int) -> None:
        await broker.publish(event_fields(i), subject, stream=stream)

    async def pending() -> int:
        info = await js.consumer_info(stream, "g")
        return int(info.num_ack_pending + info.num_pending)

    try:
        return await run_row(args.events, args.latency, done, publish_chunk, publish_one, pending)
    finally:
        await broker.stop()
        await js.delete_stream(stream)
        await nc.close()


# -- this project ---------------------------------------------------------------------


async def mediator_row(args: argparse.Namespace, url: str, batch: bool = False) -> Dict[str, float]:
    from dataclasses import dataclass

    from mediator.event import LocalEventBus
    from mediator.transport import Worker, connect

    @dataclass(frozen=True)
    class OrderPlaced:
        order_id: int
        customer: str
        sku: str
        quantity: int
        unit_price: str
        currency: str
        note: str

    bus = LocalEventBus()
    done = Done()

    @bus.register
    async def handle(event: OrderPlaced) -> None:
        done.hit()

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    group = "g"
    async with connect(url, prefix=prefix) as transport:
        async with Worker(transport, bus, group=group, concurrency=64, handle_signals=False) as worker:
            runner = asyncio.ensure_future(worker.run())  # the group exists once opened

            async def publish_chunk(first: int, count: int) -> None:
                events = [OrderPlaced(**event_fields(first + i)) for i in range(count)]
                if batch:
                    await transport.publish_many(events)
                else:
                    await asyncio.gather(*(transport.publish(e) for e in events))

            async def publish_one(i: int) -> None:
                await transport.publish(OrderPlaced(**event_fields(i)))

            async def pending() -> int:
                return await unacknowledged(transport, url, prefix, group)

            try:
                return await run_row(
                    args.events, args.latency, done, publish_chunk, publish_one, pending
                )
            finally:
                await worker.aclose(5)
                await runner
                await drop(transport, url, prefix)


async def unacknowledged(transport: Any, url: str, prefix: str, group: str) -> int:
    """Messages of ``group`` delivered and not yet acknowledged (read from the broker)."""
    if url.startswith("nats"):
        return int(await transport.pending(group))
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        total = 0
        async for key in client.scan_iter(match=f"{prefix}:s:*"):
            total += int((await client.xpending(key, group))["pending"])
        return total
    finally:
        await client.aclose()


async def drop(transport: Any, url: str, prefix: str) -> None:
    """Delete what the row left on the broker."""
    if url.startswith("nats"):
        await transport.destroy()
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


WORKERS: Dict[str, Callable[[argparse.Namespace], Awaitable[Dict[str, float]]]] = {
    "redis raw": redis_raw,
    "redis faststream": redis_faststream,
    "redis mediator": lambda a: mediator_row(a, a.redis_url),
    "redis mediator batch": lambda a: mediator_row(a, a.redis_url, batch=True),
    "nats raw": nats_raw,
    "nats faststream": nats_faststream,
    "nats mediator": lambda a: mediator_row(a, a.nats_url),
    "nats mediator batch": lambda a: mediator_row(a, a.nats_url, batch=True),
}


# -- driver ---------------------------------------------------------------------------


def faststream_python(venv_dir: Path, base_python: str) -> str:
    venv = venv_dir / "faststream"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = REQUIREMENTS.read_text()
    if not (stamp.exists() and stamp.read_text() == wanted):
        base = subprocess.check_output(
            [base_python, "-c", "import sys; print(getattr(sys, '_base_executable', sys.executable))"],
            text=True,
        ).strip()
        subprocess.check_call([base, "-m", "venv", "--clear", str(venv)])
        subprocess.check_call(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)]
        )
        stamp.write_text(wanted)
    return str(python)


def run_worker(python: str, row: str, args: argparse.Namespace) -> Optional[Dict[str, float]]:
    command = [
        python, str(Path(__file__).resolve()), "--worker", row,
        "--events", str(args.events), "--latency", str(args.latency),
        "--redis-url", args.redis_url, "--nats-url", args.nats_url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    if done.returncode != 0:
        print(f"  {row}: failed\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="this project's interpreter")
    parser.add_argument("--venv-dir", default="/tmp/mediator-transport-bench")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency", type=int, default=1_000, help="single publishes timed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = asyncio.run(WORKERS[args.worker](args))
        print(json.dumps(result))
        return

    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(ROWS)}")
    pythons = {"ours": args.python}
    if any(ROWS[row] == "faststream" for row in rows):
        pythons["faststream"] = faststream_python(Path(args.venv_dir), args.python)

    results: Dict[str, List[Dict[str, float]]] = {row: [] for row in rows}
    for round_ in range(args.repeat):
        for row in rows:
            result = run_worker(pythons[ROWS[row]], row, args)
            if result is not None:
                results[row].append(result)
                print(f"  round {round_ + 1} {row}: {result['rate']:,.0f} msg/s", file=sys.stderr)

    def best(row: str) -> Optional[float]:
        return max((r["rate"] for r in results.get(row, [])), default=None)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"{args.events:,} events of {len(PAYLOAD)} B, best of {args.repeat}"
    )
    print(
        "| row | messages/s | vs raw loop | CPU µs/message (client) | publish only, msg/s "
        "| publish p50 | publish p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        runs = results[row]
        if not runs:
            print(f"| {row} | failed | | | | | |")
            continue
        rate = best(row)
        raw = best(row.split()[0] + " raw")
        ratio = f"{rate / raw:.0%}" if raw else "—"
        publish_rate = max(r["publish_rate"] for r in runs)
        p50 = statistics.median(r["p50_us"] for r in runs)
        p99 = statistics.median(r["p99_us"] for r in runs)
        cpu = min(r["cpu_us"] for r in runs)
        print(
            f"| {row} | {rate:,.0f} | {ratio} | {cpu:.1f} | {publish_rate:,.0f} "
            f"| {p50:,.0f} µs | {p99:,.0f} µs |"
        )


if __name__ == "__main__":
    main()
