"""The benchmark scenarios, each against its physical baseline in the same process.

Run by ``benchmarks/run.py`` once per engine; prints one JSON object. Every ratio is
``best time of the scenario / best time of its baseline`` over interleaved rounds
(baseline, scenario, baseline, ...): on a shared, noisy machine the best of several
rounds taken side by side is what stays stable.
"""

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mediator  # noqa: E402
from mediator import Hook  # noqa: E402
from mediator.common.modifiers import ModifierFactory  # noqa: E402
from mediator.common.types import ActionResult, ActionSubject  # noqa: E402
from mediator.event import LocalEventBus  # noqa: E402
from mediator.request import LocalRequestBus  # noqa: E402

Loop = Callable[[int], Awaitable[None]]


class Command:
    pass


class Event:
    pass


class User:
    pass


async def handle(command: Command) -> Command:
    return command


async def handle_with_user(command: Command, user: User) -> User:
    return user


async def compare(baseline: Loop, scenario: Loop, iterations: int, rounds: int) -> Dict[str, float]:
    """Best-of-rounds seconds per iteration of both loops, run interleaved, and their ratio."""
    await baseline(max(iterations // 10, 1))  # warm up (and let PyPy's JIT compile)
    await scenario(max(iterations // 10, 1))
    best_base = best_scenario = float("inf")
    for _ in range(rounds):
        for loop, is_base in ((baseline, True), (scenario, False)):
            start = time.perf_counter()
            await loop(iterations)
            elapsed = (time.perf_counter() - start) / iterations
            if is_base:
                best_base = min(best_base, elapsed)
            else:
                best_scenario = min(best_scenario, elapsed)
    return {"baseline_ns": best_base * 1e9, "scenario_ns": best_scenario * 1e9, "ratio": best_scenario / best_base}


# -- requests ------------------------------------------------------------------------


async def _execute_vs_direct(bus: LocalRequestBus, n: int, rounds: int, bound: bool = True) -> Dict[str, float]:
    """``await bus.execute(command)`` (``handle`` registered) vs ``await handle(command)``:
    ``bound``, with ``bus.execute`` bound once before the loop; else looked up on every call,
    as most code writes it."""
    bus.register(handle)
    command = Command()

    async def direct(k: int) -> None:
        for _ in range(k):
            await handle(command)

    async def via_bound(k: int) -> None:
        execute = bus.execute
        for _ in range(k):
            await execute(command)

    async def via_attribute(k: int) -> None:
        for _ in range(k):
            await bus.execute(command)

    return await compare(direct, via_bound if bound else via_attribute, n, rounds)


async def bench_request(n: int, rounds: int) -> Dict[str, float]:
    return await _execute_vs_direct(LocalRequestBus(), n, rounds)


async def bench_request_attr(n: int, rounds: int) -> Dict[str, float]:
    return await _execute_vs_direct(LocalRequestBus(), n, rounds, bound=False)


async def bench_request_inject(n: int, rounds: int) -> Dict[str, float]:
    bus = LocalRequestBus()
    bus.register(handle_with_user)
    command, user = Command(), User()

    async def direct(k: int) -> None:
        for _ in range(k):
            await handle_with_user(command, user=user)

    async def via_bus(k: int) -> None:
        execute = bus.execute
        for _ in range(k):
            await execute(command, user=user)

    return await compare(direct, via_bus, n, rounds)


class PassThrough(ModifierFactory):
    def create(self, call: Any, **kwargs: Any) -> Any:
        async def layer(action: ActionSubject) -> ActionResult:
            return await call(action)

        return layer


class Observe(Hook):
    """A pass-through hook with both a before and an after stage."""

    def before(self, subject: Any, inject: Dict[str, Any]) -> None:
        pass

    def after(self, subject: Any, result: Any) -> Any:
        return result


class Check(Hook):
    """A pass-through hook with a before stage only (an auth check, a counter)."""

    def before(self, subject: Any, inject: Dict[str, Any]) -> None:
        pass


def _pass_through(call: Callable[[Command], Awaitable[Any]]) -> Callable[[Command], Awaitable[Any]]:
    """``PassThrough``'s layer, made by hand: the three layers share one code object, as theirs do."""

    async def layer(command: Command) -> Any:
        return await call(command)

    return layer


async def bench_request_3mod(n: int, rounds: int) -> Dict[str, float]:
    bus = LocalRequestBus(modifiers=[PassThrough(), PassThrough(), PassThrough()])
    bus.register(handle)
    command = Command()
    outer = _pass_through(_pass_through(_pass_through(handle)))

    async def nested(k: int) -> None:
        for _ in range(k):
            await outer(command)

    async def via_bus(k: int) -> None:
        execute = bus.execute
        for _ in range(k):
            await execute(command)

    return await compare(nested, via_bus, n, rounds)


async def bench_request_3mod_floor(n: int, rounds: int) -> Dict[str, float]:
    """The floor of ``request_3mod`` in Python: what the modifier contract adds, by hand.

    The same three layers, plus the two coroutines no pure-Python engine can do without:
    an innermost one wrapping the handler's value in an ``ActionResult``, and an outer one
    entering the stack with an ``ActionSubject`` and unwrapping the result. Each is an
    ``async def`` and the objects are made with ``__new__`` and slot stores: the cheapest
    form found (a class with ``__await__`` costs more on CPython, and a generator-based
    coroutine, a little cheaper on PyPy, is no coroutine to ``asyncio`` from 3.12 on).
    """
    command = Command()
    outer = _pass_through(_pass_through(_pass_through(handle)))
    new_subject, new_result = ActionSubject.__new__, ActionResult.__new__

    async def innermost(action: ActionSubject) -> ActionResult:
        result = new_result(ActionResult)
        result.result = await handle(action.subject)
        return result

    stack = _pass_through(_pass_through(_pass_through(innermost)))

    async def dispatch(command: Command) -> Any:
        action = new_subject(ActionSubject)
        action.subject = command
        action.inject = {}
        return (await stack(action)).result

    async def nested(k: int) -> None:
        for _ in range(k):
            await outer(command)

    async def by_hand(k: int) -> None:
        for _ in range(k):
            await dispatch(command)

    return await compare(nested, by_hand, n, rounds)


async def bench_request_3hooks(n: int, rounds: int) -> Dict[str, float]:
    return await _execute_vs_direct(LocalRequestBus(modifiers=[Observe(), Observe(), Observe()]), n, rounds)


async def bench_request_3hooks_floor(n: int, rounds: int) -> Dict[str, float]:
    """The floor of ``request_3hooks``: the six callbacks in one wrapper coroutine.

    An after stage must run when the handler's coroutine returns, so whatever ``execute``
    returns wraps it: here the least of that, a plain call returning one ``async def``
    that runs the befores, awaits the handler and runs the afters.
    """
    hooks = [Observe(), Observe(), Observe()]
    before_1, before_2, before_3 = (hook.before for hook in hooks)
    after_1, after_2, after_3 = (hook.after for hook in hooks)
    command = Command()

    async def wrapper(command: Command, inject: Dict[str, Any]) -> Any:
        before_1(command, inject)
        before_2(command, inject)
        before_3(command, inject)
        return after_1(command, after_2(command, after_3(command, await handle(command))))

    def execute(command: Command) -> Awaitable[Any]:
        return wrapper(command, {})

    async def direct(k: int) -> None:
        for _ in range(k):
            await handle(command)

    async def by_hand(k: int) -> None:
        for _ in range(k):
            await execute(command)

    return await compare(direct, by_hand, n, rounds)


async def bench_request_3hooks_callbacks(n: int, rounds: int) -> Dict[str, float]:
    """The bound of ``request_3hooks`` for any engine: the six callbacks and the await
    written inline in the caller's own loop, with no wrapper, no dispatch and no call of
    anything but the callbacks and the handler. What it costs over the direct await is
    what six Python calls cost, which nothing that runs them can avoid.
    """
    hooks = [Observe(), Observe(), Observe()]
    before_1, before_2, before_3 = (hook.before for hook in hooks)
    after_1, after_2, after_3 = (hook.after for hook in hooks)
    command = Command()

    async def direct(k: int) -> None:
        for _ in range(k):
            await handle(command)

    async def inline(k: int) -> None:
        for _ in range(k):
            inject: Dict[str, Any] = {}
            before_1(command, inject)
            before_2(command, inject)
            before_3(command, inject)
            after_1(command, after_2(command, after_3(command, await handle(command))))

    return await compare(direct, inline, n, rounds)


async def bench_request_3hooks_before(n: int, rounds: int) -> Dict[str, float]:
    return await _execute_vs_direct(LocalRequestBus(modifiers=[Check(), Check(), Check()]), n, rounds)


# -- events --------------------------------------------------------------------------


def _handlers(count: int, suspend: bool) -> List[Callable[[Event], Awaitable[None]]]:
    handlers = []
    for _ in range(count):
        if suspend:

            async def handler(event: Event) -> None:
                await asyncio.sleep(0)

        else:

            async def handler(event: Event) -> None:
                return None

        handlers.append(handler)
    return handlers


async def _bench_publish(count: int, suspend: bool, n: int, rounds: int) -> Dict[str, float]:
    bus = LocalEventBus(sync_mode=True)
    handlers = _handlers(count, suspend)
    for handler in handlers:
        bus.register(handler)
    event = Event()

    async def sequential(k: int) -> None:
        for _ in range(k):
            for handler in handlers:
                await handler(event)

    async def gathered(k: int) -> None:
        for _ in range(k):
            await asyncio.gather(*[handler(event) for handler in handlers])

    async def via_bus(k: int) -> None:
        publish = bus.publish
        for _ in range(k):
            await publish(event)

    return await compare(gathered if suspend else sequential, via_bus, n, rounds)


async def bench_publish_1(n: int, rounds: int) -> Dict[str, float]:
    return await _bench_publish(1, False, n, rounds)


async def bench_publish_10(n: int, rounds: int) -> Dict[str, float]:
    return await _bench_publish(10, False, n, rounds)


async def bench_publish_10_suspending(n: int, rounds: int) -> Dict[str, float]:
    return await _bench_publish(10, True, n // 5, rounds)


async def bench_publish_background(n: int, rounds: int) -> Dict[str, float]:
    """Fire-and-forget to 10 handlers, drained at the end, vs 10 tasks made by hand."""
    bus = LocalEventBus()
    handlers = _handlers(10, False)
    for handler in handlers:
        bus.register(handler)
    event = Event()
    n = n // 10

    async def by_hand(k: int) -> None:
        create_task = asyncio.get_running_loop().create_task
        tasks = set()
        for _ in range(k):
            for handler in handlers:
                task = create_task(handler(event))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.sleep(0)

    async def via_bus(k: int) -> None:
        publish = bus.publish
        for _ in range(k):
            await publish(event)
        await _drain(bus)

    result = await compare(by_hand, via_bus, n, rounds)
    result["events_per_s"] = 1e9 / result["scenario_ns"]
    return result


async def _drain(bus: LocalEventBus) -> None:
    drain = getattr(bus, "drain", None)
    if drain is not None:
        await drain()
        return
    while bus._tasks:
        await asyncio.sleep(0)


# -- registration and memory ---------------------------------------------------------


def bench_register_1000(rounds: int) -> Dict[str, float]:
    """Milliseconds to register 1000 handlers, one per class, on a fresh bus (best round)."""
    best = float("inf")
    for _ in range(rounds):
        classes = [type(f"Command{i}", (), {}) for i in range(1000)]
        handlers = []
        for cls in classes:

            async def handler(command: cls) -> None:  # type: ignore[valid-type]
                return None

            handlers.append(handler)
        bus = LocalRequestBus()
        start = time.perf_counter()
        for handler in handlers:
            bus.register(handler)
        best = min(best, time.perf_counter() - start)
    return {"ms": best * 1e3}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def bench_memory(dispatches: int) -> Dict[str, float]:
    """RSS growth over ``dispatches`` executes (plain, through 3 modifiers, through 3 hooks)
    and sync publishes, garbage collector off."""
    requests = LocalRequestBus()
    requests.register(handle_with_user)
    modified = LocalRequestBus(modifiers=[PassThrough(), PassThrough(), PassThrough()])
    modified.register(handle_with_user)
    hooked = LocalRequestBus(modifiers=[Observe(), Observe(), Observe()])
    hooked.register(handle_with_user)
    events = LocalEventBus(sync_mode=True)
    for handler in _handlers(3, False):
        events.register(handler)
    command, event, user = Command(), Event(), User()

    async def four_dispatches() -> None:
        await requests.execute(command, user=user)
        await modified.execute(command, user=user)
        await hooked.execute(command, user=user)
        await events.publish(event)

    for _ in range(50_000):  # warm up allocator pools and the JIT
        await four_dispatches()
    gc.collect()
    gc.disable()
    try:
        before = _rss_bytes()
        for _ in range(dispatches // 4):
            await four_dispatches()
        growth = _rss_bytes() - before
    finally:
        gc.enable()
    return {"rss_growth_mb": growth / 2**20, "dispatches": dispatches}


# -- instrumented (mediator.opentelemetry) ----------------------------------------------


def _instrumented(bus: Any) -> Any:
    """``instrument(bus)`` with the SDK's providers: every span recorded and ended, then
    dropped by a processor that exports nothing (the cost of the instrumentation and the
    SDK, not of an exporter); metrics into an in-memory reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from mediator.opentelemetry import instrument

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(bus, tracer_provider=tracer_provider, meter_provider=meter_provider)
    return bus


async def _traced_vs_plain(make: Callable[[], Any], subject: Any, n: int, rounds: int) -> Dict[str, float]:
    plain, traced = make(), _instrumented(make())
    dispatch_plain = plain.execute if isinstance(plain, LocalRequestBus) else plain.publish
    dispatch_traced = traced.execute if isinstance(traced, LocalRequestBus) else traced.publish

    async def without(k: int) -> None:
        for _ in range(k):
            await dispatch_plain(subject)

    async def with_tracing(k: int) -> None:
        for _ in range(k):
            await dispatch_traced(subject)

    result = await compare(without, with_tracing, n, rounds)
    result["added_us"] = (result["scenario_ns"] - result["baseline_ns"]) / 1e3
    return result


async def bench_request_traced(n: int, rounds: int) -> Dict[str, float]:
    """``execute`` on an instrumented bus (a span, a histogram record) vs the same bus plain."""

    def make() -> LocalRequestBus:
        bus = LocalRequestBus()
        bus.register(handle)
        return bus

    return await _traced_vs_plain(make, Command(), n // 10, rounds)


async def bench_publish_traced(n: int, rounds: int) -> Dict[str, float]:
    """``publish`` (sync) to 1 handler on an instrumented bus (two spans: the publish and
    the handler run) vs the same bus plain."""

    def make() -> LocalEventBus:
        bus = LocalEventBus(sync_mode=True)
        for handler in _handlers(1, False):
            bus.register(handler)
        return bus

    return await _traced_vs_plain(make, Event(), n // 10, rounds)


SCENARIOS = {
    "request": bench_request,
    "request_attr": bench_request_attr,
    "request_inject": bench_request_inject,
    "request_3mod": bench_request_3mod,
    "request_3mod_floor": bench_request_3mod_floor,
    "request_3hooks": bench_request_3hooks,
    "request_3hooks_floor": bench_request_3hooks_floor,
    "request_3hooks_callbacks": bench_request_3hooks_callbacks,
    "request_3hooks_before": bench_request_3hooks_before,
    "publish_1": bench_publish_1,
    "publish_10": bench_publish_10,
    "publish_10_suspending": bench_publish_10_suspending,
    "publish_background": bench_publish_background,
    # last: they import opentelemetry, which the others never do
    "request_traced": bench_request_traced,
    "publish_traced": bench_publish_traced,
}


async def main_async(args: argparse.Namespace) -> Dict[str, Any]:
    results: Dict[str, Any] = {
        "engine": "compiled" if mediator.COMPILED else "pure",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    for name, scenario in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        results[name] = await scenario(args.iterations, args.rounds)
    if not args.only or "register_1000" in args.only:
        results["register_1000"] = bench_register_1000(args.rounds)
    if not args.only or "memory" in args.only:
        results["memory"] = await bench_memory(args.memory_dispatches)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--memory-dispatches", type=int, default=1_000_000)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
