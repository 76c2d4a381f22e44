"""The event bus the process tests run in worker processes (``python -m mediator.worker proc_app:bus``).

Each handled event appends a line to the file named by ``PROC_LOG`` (one ``os.write`` of
an ``O_APPEND`` file per line: whole lines, whichever process writes). Publishers send
these events encoded (``publish_encoded("proc.Tick", b'{"n": 1}')``), so they need not
import this module.
"""

import asyncio
import os
from dataclasses import dataclass

from mediator.codec import event_type
from mediator.event import LocalEventBus


@event_type("proc.Tick")
@dataclass(frozen=True)
class Tick:
    n: int


@event_type("proc.Slow")
@dataclass(frozen=True)
class Slow:
    n: int
    seconds: float


def record(line: str) -> None:
    fd = os.open(os.environ["PROC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


DELAY = float(os.environ.get("PROC_DELAY", "0"))

bus = LocalEventBus()


@bus.register
async def on_tick(event: Tick) -> None:
    if DELAY:
        await asyncio.sleep(DELAY)
    record(f"tick {event.n}")


@event_type("proc.Crash")
@dataclass(frozen=True)
class Crash:
    n: int


@bus.register
async def on_crash(event: Crash) -> None:
    record(f"crash {event.n}")
    os._exit(3)  # the worker process dies in the handler, as a segfault or an OOM kill would


@bus.register
async def on_slow(event: Slow) -> None:
    record(f"start {event.n}")
    await asyncio.sleep(event.seconds)
    record(f"end {event.n}")
