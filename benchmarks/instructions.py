"""Instructions per dispatch of the plain fast paths, and of the traced ones, under callgrind.

    python benchmarks/instructions.py [--engine compiled|pure] [--traced] [SCENARIO ...]

Timing on a shared machine moves by 10-30%; instruction counts do not. Each scenario is
run twice in a process of its own under ``valgrind --tool=callgrind`` (``PYTHONHASHSEED=0``),
with 1,000 and 11,000 dispatches after a warm-up (traced: 100 and 1,100): the difference
is the cost of one dispatch, start-up excluded. Scenarios: ``request`` (``await execute(cmd)``, one
trivial handler), ``publish_1`` and ``publish_10`` (``await publish(evt)`` with
``sync_mode=True``). The plain scenarios never import ``mediator.opentelemetry``; with
``--traced`` the bus is ``instrument``-ed (an SDK ``TracerProvider`` whose processor
drops the spans, and a ``MeterProvider`` with an in-memory reader), for the overhead.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Awaitable, Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCENARIOS = ("request", "publish_1", "publish_10")


class Command:
    pass


class Event:
    pass


async def handle(command: Command) -> Command:
    return command


def build(name: str, traced: bool) -> Callable[[int], Awaitable[None]]:
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    bus: Any
    if name == "request":
        bus = LocalRequestBus()
        bus.register(handle)
        subject: Any = Command()
    else:
        bus = LocalEventBus(sync_mode=True)
        for _ in range(1 if name == "publish_1" else 10):

            async def handler(event: Event) -> None:
                return None

            bus.register(handler)
        subject = Event()
    if traced:
        instrument_quietly(bus)

    dispatch = bus.execute if name == "request" else bus.publish

    async def loop(k: int) -> None:
        for _ in range(k):
            await dispatch(subject)

    return loop


def instrument_quietly(bus: Any) -> None:
    """``instrument(bus)`` with real SDK providers whose spans go nowhere."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from mediator.opentelemetry import instrument

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())  # on_end does nothing
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(bus, tracer_provider=tracer_provider, meter_provider=meter_provider)


def drive(loop: Callable[[int], Awaitable[None]], k: int) -> None:
    """Run ``loop(k)`` to its end without an event loop (none of the scenarios suspends)."""
    coroutine = loop(k)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the loop suspended")


def worker(name: str, traced: bool, loops: int) -> None:
    loop = build(name, traced)
    asyncio.run(loop(10))  # the first dispatches inside a running loop, as an app has
    drive(loop, 1_000)  # warm up the interpreter's specialised instructions
    drive(loop, loops)
    if not traced and "opentelemetry" in sys.modules:
        raise RuntimeError("the plain scenario imported opentelemetry")


def count_instructions(name: str, traced: bool, loops: int, env: Dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, os.path.abspath(__file__), "--worker", name, "--loops", str(loops),
        ] + (["--traced"] if traced else [])
        subprocess.run(command, check=True, capture_output=True, env=env)
        with open(out) as profile:
            match = re.search(r"^summary: (\d+)", profile.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in callgrind's output for {name}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--engine", choices=("compiled", "pure"), default="compiled")
    parser.add_argument("--traced", action="store_true", help="also count the instrumented bus")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.traced, args.loops)
        return
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}: choose from {', '.join(SCENARIOS)}")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("MEDIATOR_NO_EXTENSIONS", None)
    if args.engine == "pure":
        env["MEDIATOR_NO_EXTENSIONS"] = "1"
    header = "| scenario | plain |" + (" traced | ratio |" if args.traced else "")
    print(f"engine: {args.engine}, {sys.implementation.name} {sys.version.split()[0]}; instructions per dispatch")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.scenarios or SCENARIOS:
        counts = []
        for traced in (False, True) if args.traced else (False,):
            base, extra = (100, 1_000) if traced else (1_000, 10_000)  # a traced dispatch costs 100x more
            low = count_instructions(name, traced, base, env)
            high = count_instructions(name, traced, base + extra, env)
            counts.append((high - low) / extra)
        cells = " | ".join(f"{count:,.0f}" for count in counts)
        ratio = f" | {counts[1] / counts[0]:.2f}x |" if args.traced else " |"
        print(f"| {name} | {cells}{ratio}")


if __name__ == "__main__":
    main()
