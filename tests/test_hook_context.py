"""A hooked dispatch starts when it is first awaited, as an ``async def`` would: its hooks run
in the context of the task that awaits it, never in the caller's.

A hook that sets a context variable (a request id, a tracing span, the current user) must
neither leak into the code that called ``execute``/``publish`` nor reach another dispatch
started alongside it (``gather``, ``create_task``, a background publish).
"""

import asyncio
import contextvars
import gc
import warnings
from dataclasses import dataclass

import pytest

from mediator import Hook
from mediator.event import LocalEventBus
from mediator.request import LocalRequestBus

current = contextvars.ContextVar("current", default=None)


@dataclass
class Ask:
    name: str


@dataclass
class Told:
    name: str


class Tag(Hook):
    """Sets ``current`` to ``tag`` (or to the subject's name) before the handler runs."""

    def __init__(self, log, tag=None, after=True, error=False):
        self.log, self.tag = log, tag
        if not after:
            self.after = None
        if error:
            self.error = lambda subject, exc: self.log.append(("error", self.tag or subject.name))

    def before(self, subject, inject):
        self.log.append(("before", self.tag or subject.name))
        current.set(self.tag or subject.name)

    def after(self, subject, result):
        self.log.append(("after", self.tag or subject.name))
        return result


async def answer(ask: Ask):
    await asyncio.sleep(0)  # the other dispatch runs its hooks meanwhile
    return ask.name, current.get()


def answer_at_once(ask: Ask):  # a plain def handler
    return ask.name, current.get()


async def answer_with(ask: Ask, user=None):  # takes an injected argument
    await asyncio.sleep(0)
    return ask.name, current.get(), user


SHAPES = {  # hook shapes that take different paths through the engines
    "before_after": dict(),
    "before_only": dict(after=False),
    "with_error_stage": dict(error=True),
}
HANDLERS = {"async": answer, "sync": answer_at_once}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("handler", HANDLERS)
def test_nothing_runs_until_the_dispatch_is_awaited(shape, handler):
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, **SHAPES[shape])])
    bus.register(HANDLERS[handler])

    async def main():
        awaitable = bus.execute(Ask("a"))
        await asyncio.sleep(0)
        assert log == []
        assert current.get() is None
        return await awaitable

    assert asyncio.run(main()) == ("a", "a")
    assert log[0] == ("before", "a")


@pytest.mark.parametrize("shape", SHAPES)
def test_dispatches_gathered_each_see_their_own_hooks(shape):
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, **SHAPES[shape])])
    bus.register(answer)

    async def main():
        results = await asyncio.gather(bus.execute(Ask("a")), bus.execute(Ask("b")))
        return results, current.get()

    results, left_in_caller = asyncio.run(main())
    assert results == [("a", "a"), ("b", "b")]
    assert left_in_caller is None


def test_a_dispatch_made_a_task_leaves_the_caller_alone():
    bus = LocalRequestBus(modifiers=[Tag([])])
    bus.register(answer_with)

    async def main():
        task = asyncio.create_task(bus.execute(Ask("a"), user="ann"))
        seen_by_caller = current.get()
        return await task, seen_by_caller, current.get()

    assert asyncio.run(main()) == (("a", "a", "ann"), None, None)


def test_an_awaited_dispatch_runs_its_hooks_in_the_awaiting_task():
    """Awaited directly, a dispatch is part of the caller's task, as any coroutine is."""
    bus = LocalRequestBus(modifiers=[Tag([])])
    bus.register(answer)

    async def main():
        result = await bus.execute(Ask("a"))
        return result, current.get()

    assert asyncio.run(main()) == (("a", "a"), "a")


@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync", "background"])
def test_event_hooks_leave_the_publisher_alone(sync_mode):
    seen = []

    def handler_of(tag):
        async def handler(told: Told):
            await asyncio.sleep(0)
            seen.append((tag, current.get()))

        return handler

    bus = LocalEventBus(sync_mode=sync_mode)
    for tag in ("h1", "h2"):
        bus.register(handler_of(tag), modifiers=[Tag([], tag=tag)])

    async def main():
        await bus.publish(Told("e"))
        left_in_publisher = current.get()
        await bus.drain()
        return left_in_publisher

    assert asyncio.run(main()) is None
    assert sorted(seen) == [("h1", "h1"), ("h2", "h2")]


def test_a_hooked_dispatch_never_awaited_warns_and_runs_nothing():
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log)])
    bus.register(answer)

    async def main():
        bus.execute(Ask("a"))  # dropped: never awaited
        gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert log == []
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        f"coroutine '{answer.__qualname__}' was never awaited"
    ]


def test_a_hooked_dispatch_closed_unawaited_runs_nothing_and_does_not_warn():
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, error=True)])
    bus.register(answer)

    async def main():
        bus.execute(Ask("a")).close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert log == []
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_a_before_refusing_meets_each_outer_error_stage_once():
    log = []

    class Refuse(Tag):
        def before(self, subject, inject):
            self.log.append(("before", self.tag))
            raise PermissionError(self.tag)

    bus = LocalRequestBus(modifiers=[Tag(log, tag="outer", error=True), Refuse(log, tag="inner", error=True)])
    bus.register(answer)
    with pytest.raises(PermissionError, match="inner"):
        asyncio.run(bus.execute(Ask("a")))
    assert log == [("before", "outer"), ("before", "inner"), ("error", "outer")]


def test_a_hooked_dispatch_dropped_in_a_reference_cycle_with_its_bus_warns_safely():
    """The GC may clear the dispatch after its bus (whose route names it): it still warns."""
    log = []

    class Holder:
        pass

    def drop():
        bus = LocalRequestBus(modifiers=[Tag(log)])
        bus.register(answer)
        holder = Holder()
        holder.bus, holder.dispatch = bus, bus.execute(Ask("a"))
        holder.self = holder  # a cycle: only the GC frees it

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drop()
        gc.collect()
    assert log == []
    assert len([w for w in caught if "was never awaited" in str(w.message)]) == 1
