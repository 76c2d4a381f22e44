"""A worker process for the JetStream fault tests (not a test module).

    python tests/transport/jetstream_worker.py URL GROUP OUT_FILE CONCURRENCY

Consumes ``faults.Job`` events for ``GROUP`` (``start="earliest"``, ``claim_idle=1``) and
appends each handled job's number to ``OUT_FILE``, one line per run of the handler, with
an unbuffered write: what a SIGKILL leaves in the file is exactly what the handler did.
SIGTERM stops it gracefully (exit 0).
"""

import asyncio
import os
import sys
from dataclasses import dataclass

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.transport import Worker, connect


@event_type("faults.Job")
@dataclass(frozen=True)
class Job:
    n: int


def main() -> None:
    url, group, out, concurrency = sys.argv[1:5]
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    bus = LocalEventBus()

    @bus.register
    async def on_job(event: Job) -> None:
        await asyncio.sleep(0.001)
        os.write(fd, b"%d\n" % event.n)

    async def run() -> None:
        async with connect(url) as transport:
            worker = Worker(transport, bus, group=group, concurrency=int(concurrency), claim_idle=1.0, poll=0.2, start="earliest")
            async with worker:
                print("ready", flush=True)
                await worker.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
