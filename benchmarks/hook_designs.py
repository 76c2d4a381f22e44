"""Pure CPython, ``request_3hooks``: the least each dispatch design can cost.

    python benchmarks/hook_designs.py [--processes 5] [--instructions]

The pure engine's hooked path is measured against the cheapest Python form of each design
an ``execute(obj, **inject)`` could have, every one with the three ``Observe`` hooks of
``scenarios.py`` (six callbacks) around the same handler, for one request class, and with
none of the checks a real table needs (no missing-handler error, no other route kinds, no
error delivered at await time). So each ``*_least`` row is a bound its design cannot go
under, not a rival engine:

- ``deferred_least``: ``execute`` returns one coroutine that, when first awaited, runs the
  befores, awaits the handler and runs the afters. This is what both engines do, so that
  hooks run in the context of the task awaiting the dispatch.
- ``eager_least``: ``execute`` calls the befores itself and returns one coroutine running
  the afters around the handler's await (the engines' design before 2026-12-02: befores ran
  in the caller's context).
- ``async_def_least``: ``execute`` is itself an ``async def`` (one frame fewer for hooks),
  and ``async_def_least_plain``, the same design's hook-free request: its price, since it
  can no longer return the handler's own coroutine.

Every row is a ratio to ``await handle(cmd)``. Timed: each process takes the best of
``--rounds`` interleaved rounds (``scenarios.compare``), the table the median over
``--processes`` processes. ``--instructions``: also instructions per call under
``valgrind --tool=callgrind`` (repeatable where timing is not): a run of N+10,000 loops
minus a run of N, over 10,000.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Awaitable, Callable, Dict, Tuple

os.environ["MEDIATOR_NO_EXTENSIONS"] = "1"  # the pure engine, before mediator is imported
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scenarios  # noqa: E402
from scenarios import Command, Observe, handle  # noqa: E402

from mediator.request import LocalRequestBus  # noqa: E402

Execute = Callable[..., Awaitable[Any]]


def designs() -> Dict[str, Execute]:
    """Each design's ``execute``, bound, as the benchmark's loop calls it."""
    hooks = [Observe(), Observe(), Observe()]
    before_1, before_2, before_3 = (hook.before for hook in hooks)
    after_1, after_2, after_3 = (hook.after for hook in hooks)

    async def run_all(command: Any, inject: Dict[str, Any]) -> Any:
        before_1(command, inject)
        before_2(command, inject)
        before_3(command, inject)
        return after_1(command, after_2(command, after_3(command, await handle(command))))

    async def run_afters(command: Any) -> Any:
        return after_1(command, after_2(command, after_3(command, await handle(command))))

    class EagerLeast:
        def __init__(self) -> None:
            self._routes = {Command: (before_1, before_2, before_3, run_afters)}

        def execute(self, obj: Any, **inject: Any) -> Any:
            first, second, third, finish = self._routes[type(obj)]
            first(obj, inject)
            second(obj, inject)
            third(obj, inject)
            return finish(obj)

    class DeferredLeast:
        def __init__(self) -> None:
            self._routes = {Command: run_all}

        def execute(self, obj: Any, **inject: Any) -> Any:
            return self._routes[type(obj)](obj, inject)

    class AsyncDefLeast:
        def __init__(self, hooked: bool) -> None:
            stages = (before_1, before_2, before_3, after_3, after_2, after_1)
            self._routes = {Command: (handle, stages if hooked else None)}

        async def execute(self, obj: Any, **inject: Any) -> Any:
            fn, stages = self._routes[type(obj)]
            if stages is None:
                return await fn(obj)
            first, second, third, inner, middle, outer = stages
            first(obj, inject)
            second(obj, inject)
            third(obj, inject)
            return outer(obj, middle(obj, inner(obj, await fn(obj))))

    hooked = LocalRequestBus(modifiers=hooks)
    hooked.register(handle)
    plain = LocalRequestBus()
    plain.register(handle)
    return {
        "engine (pure)": hooked.execute,
        "deferred_least": DeferredLeast().execute,
        "eager_least": EagerLeast().execute,
        "async_def_least": AsyncDefLeast(hooked=True).execute,
        "engine (pure), plain request": plain.execute,
        "async_def_least_plain": AsyncDefLeast(hooked=False).execute,
    }


async def checked(execute: Execute) -> None:
    """Each design must return what the engine returns: the handler's command."""
    command = Command()
    result = await execute(command)
    if result is not command:
        raise AssertionError(f"{execute!r} returned {result!r}")


def direct_loop(command: Any) -> Callable[[int], Awaitable[None]]:
    async def direct(k: int) -> None:
        for _ in range(k):
            await handle(command)

    return direct


def design_loop(execute: Execute, command: Any) -> Callable[[int], Awaitable[None]]:
    async def loop(k: int) -> None:
        for _ in range(k):
            await execute(command)

    return loop


async def timed(iterations: int, rounds: int) -> Dict[str, float]:
    command = Command()
    ratios = {}
    for name, execute in designs().items():
        await checked(execute)
        figures = await scenarios.compare(direct_loop(command), design_loop(execute, command), iterations, rounds)
        ratios[name] = figures["ratio"]
    return ratios


def drive(loop: Callable[[int], Awaitable[None]], k: int) -> None:
    """Run ``loop(k)`` to its end without an event loop (none of it suspends)."""
    coroutine = loop(k)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the loop suspended")


def count_instructions(name: str, loops: int) -> int:
    """Instructions of a whole process running ``name`` ``loops`` times, under callgrind."""
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, os.path.abspath(__file__), "--worker", name, "--loops", str(loops),
        ]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        with open(out) as profile:
            match = re.search(r"^summary: (\d+)", profile.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in callgrind's output for {name}")
    return int(match.group(1))


def instructions_per_call(name: str, base: int = 1_000, extra: int = 10_000) -> float:
    return (count_instructions(name, base + extra) - count_instructions(name, base)) / extra


def worker(name: str, loops: int) -> None:
    command = Command()
    if name == "direct":
        loop = direct_loop(command)
    else:
        execute = designs()[name]
        asyncio.run(checked(execute))
        loop = design_loop(execute, command)
    drive(loop, 1_000)  # warm up the interpreter's specialised instructions
    drive(loop, loops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--loops", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timed-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.loops)
    if args.timed_once:
        print(json.dumps(asyncio.run(timed(args.iterations, args.rounds))))
        return
    runs = []
    for _ in range(args.processes):
        command = [sys.executable, os.path.abspath(__file__), "--timed-once"]
        command += ["--iterations", str(args.iterations), "--rounds", str(args.rounds)]
        runs.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    counts: Dict[str, Tuple[float, float]] = {}
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind")
        direct = instructions_per_call("direct")
        counts = {name: (instructions_per_call(name), direct) for name in runs[0]}
    print(f"{sys.implementation.name} {sys.version.split()[0]}, pure engine; ratio to `await handle(cmd)`")
    header = "| design | timed, median of {} (all) |{}".format(len(runs), " instructions per call |" if counts else "")
    print(header)
    print("|---|---|" + ("---|" if counts else ""))
    for name in runs[0]:
        ratios = [run[name] for run in runs]
        cells = f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})"
        if counts:
            per_call, direct = counts[name]
            cells += f" | {per_call:,.0f} ({per_call / direct:.2f}x)"
        print(f"| {name} | {cells} |")
    if counts:
        print(f"direct await: {counts[next(iter(counts))][1]:,.0f} instructions per call")


if __name__ == "__main__":
    main()
