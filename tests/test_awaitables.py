"""What ``execute`` hands back behaves as a coroutine, whatever wraps the handler.

Behind hooks and modifier stacks the compiled engine returns its own awaitable (a relay,
with no coroutine per layer) where the pure engine returns coroutines: both must suit
``await``, ``create_task``, cancellation, ``close`` and any return value.
"""

import asyncio
import gc
import warnings
from dataclasses import dataclass

import pytest

from mediator import Hook
from mediator.common.modifiers import ModifierFactory
from mediator.event import LocalEventBus
from mediator.request import LocalRequestBus


@dataclass
class Ask:
    value: object = None
    pauses: int = 0


class Boom(Exception):
    pass


class PassThrough(ModifierFactory):
    def create(self, call, **kwargs):
        async def layer(action):
            return await call(action)

        return layer


class Recorder:
    """Hooks that record what they see; the after stage passes the result on."""

    def __init__(self):
        self.seen = []

    def hook(self, name):
        return Hook(
            before=lambda subject, inject: self.seen.append((name, "before")),
            after=lambda subject, result: self.seen.append((name, "after")) or result,
            error=lambda subject, error: self.seen.append((name, "error", type(error).__name__)),
        )


# Every shape a route can take: the handler alone, light hooks, factory layers, both.
SHAPES = {
    "bare": lambda rec: [],
    "before_only": lambda rec: [Hook(before=lambda subject, inject: None)],
    "hooks": lambda rec: [rec.hook("a"), rec.hook("b")],
    "factories": lambda rec: [PassThrough(), PassThrough(), PassThrough()],
    "factories_and_hooks": lambda rec: [PassThrough(), rec.hook("a"), PassThrough(), rec.hook("b")],
}


async def answer(ask: Ask) -> object:
    for _ in range(ask.pauses):
        await asyncio.sleep(0)
    if isinstance(ask.value, Boom):
        raise ask.value
    return ask.value


def make_bus(shape, handler=answer):
    recorder = Recorder()
    bus = LocalRequestBus(modifiers=SHAPES[shape](recorder))
    bus.register(handler)
    return bus, recorder


shapes = pytest.mark.parametrize("shape", sorted(SHAPES))


@shapes
@pytest.mark.parametrize("pauses", [0, 1, 3])
@pytest.mark.parametrize(
    "value",
    [None, 7, "text", (1, 2), (), ValueError("a value, not an error"), StopIteration(5)],
    ids=["none", "int", "str", "tuple", "empty_tuple", "exception_value", "stop_iteration_value"],
)
def test_any_return_value_comes_back_as_it_is(shape, pauses, value):
    """Tuples and exception instances are values too (a return travels in StopIteration)."""
    bus, _ = make_bus(shape)
    assert asyncio.run(bus.execute(Ask(value, pauses))) is value


@shapes
@pytest.mark.parametrize("pauses", [0, 2])
def test_errors_pass_out_through_every_layer(shape, pauses):
    bus, recorder = make_bus(shape)
    error = Boom("handler failed")
    with pytest.raises(Boom) as caught:
        asyncio.run(bus.execute(Ask(error, pauses)))
    assert caught.value is error
    if shape in ("hooks", "factories_and_hooks"):
        assert recorder.seen == [("a", "before"), ("b", "before"), ("b", "error", "Boom"), ("a", "error", "Boom")]


@shapes
def test_the_awaitable_suits_create_task_and_gather(shape):
    bus, _ = make_bus(shape)

    async def main():
        awaitable = bus.execute(Ask(1, 1))
        assert asyncio.iscoroutine(awaitable)
        first = await asyncio.create_task(awaitable)
        rest = await asyncio.gather(bus.execute(Ask(2, 2)), bus.execute(Ask(3)))
        return [first, *rest]

    assert asyncio.run(main()) == [1, 2, 3]


@shapes
def test_cancelling_the_caller_cancels_the_handler(shape):
    """Cancellation reaches the handler where it waits; hooks' error stages never see it."""
    finished, recorders = [], []

    async def main():
        waiting = asyncio.Event()

        async def slow(ask: Ask) -> object:
            waiting.set()
            try:
                await asyncio.sleep(60)
            finally:
                finished.append("cleaned up")
            return ask.value

        bus, recorder = make_bus(shape, handler=slow)
        recorders.append(recorder)
        task = asyncio.create_task(bus.execute(Ask(1)))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert finished == ["cleaned up"]
    assert [entry for entry in recorders[0].seen if entry[1] != "before"] == []


@shapes
def test_a_modifier_can_retry_after_the_handler_error(shape):
    """A layer may await the rest of the stack again: each call starts it afresh."""

    class Recover(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                try:
                    return await call(action)
                except Boom:
                    action.subject.value = "recovered"
                    return await call(action)

            return layer

    recorder = Recorder()
    bus = LocalRequestBus(modifiers=[Recover(), *SHAPES[shape](recorder)])
    bus.register(answer)
    assert asyncio.run(bus.execute(Ask(Boom("first try"), 1))) == "recovered"


@shapes
def test_awaiting_one_result_twice_is_refused(shape):
    bus, _ = make_bus(shape)

    async def main():
        awaitable = bus.execute(Ask(1, 1))
        assert await awaitable == 1
        with pytest.raises(RuntimeError):
            await awaitable

    asyncio.run(main())


@shapes
def test_closing_an_unawaited_result_runs_nothing(shape):
    """Closing what execute returned runs no handler and no hook (a hooked dispatch starts
    when first awaited, and so is the stack of factory layers). No "never awaited" warning
    follows."""
    ran = []

    async def tracked(ask: Ask) -> object:
        ran.append(ask)
        return ask.value

    bus, recorder = make_bus(shape, handler=tracked)

    async def main():
        awaitable = bus.execute(Ask(1))
        awaitable.close()
        awaitable.close()  # closing twice is harmless, as for a coroutine

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert ran == []
    assert recorder.seen == []
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]


@shapes
def test_a_sync_handler_behind_the_stack(shape):
    def double(ask: Ask) -> object:
        return ask.value * 2

    bus, _ = make_bus(shape, handler=double)
    assert asyncio.run(bus.execute(Ask(21))) == 42


@shapes
def test_a_sync_handler_returning_a_future_behind_the_stack(shape):
    def later(ask: Ask) -> "asyncio.Future[object]":
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, ask.value)
        return future

    bus, _ = make_bus(shape, handler=later)

    async def main():
        return await bus.execute(Ask("soon")), await asyncio.create_task(bus.execute(Ask("task")))

    assert asyncio.run(main()) == ("soon", "task")


@shapes
@pytest.mark.parametrize("strategy", ["background", "concurrent", "sequential"])
def test_event_handlers_behind_the_stack_suspend_and_finish(shape, strategy):
    """Suspended handlers are carried on in tasks (awaited strategies) or run as tasks."""
    recorder = Recorder()
    bus = LocalEventBus(modifiers=SHAPES[shape](recorder), strategy=strategy)
    done = []

    async def first(ask: Ask) -> None:
        for _ in range(ask.pauses):
            await asyncio.sleep(0)
        done.append(("first", ask.value))

    async def second(ask: Ask) -> None:
        await asyncio.sleep(0)
        done.append(("second", ask.value))

    bus.register(first)
    bus.register(second)

    async def main():
        await bus.publish(Ask(1, 2))
        await bus.drain()

    asyncio.run(main())
    assert sorted(done) == [("first", 1), ("second", 1)]


class SyncLayer(ModifierFactory):
    """A mistake: a layer that is a plain def, returning an ActionResult, not an awaitable."""

    def create(self, call, **kwargs):
        from mediator.common.types import ActionResult

        def layer(action):
            return ActionResult("never awaited")

        return layer


@pytest.mark.parametrize("hooks", [False, True])
def test_a_layer_that_returns_no_awaitable_is_named_in_the_error(hooks):
    bus = LocalRequestBus(modifiers=[SyncLayer(), *([Hook(after=lambda subject, result: result)] if hooks else [])])
    bus.register(answer)
    with pytest.raises(TypeError, match=r"modifier stack of .*answer.* returned ActionResult.*awaitable"):
        asyncio.run(bus.execute(Ask(1)))


class RaisingLayer(ModifierFactory):
    """A layer that fails as it is called, before making any awaitable."""

    def create(self, call, **kwargs):
        def layer(action):
            raise Boom("the layer failed")

        return layer


@shapes
@pytest.mark.parametrize("failure", ["handler_binds_badly", "layer_raises"])
def test_a_failure_as_the_call_starts_is_raised_where_it_is_awaited(shape, failure):
    """Nothing raises from execute() itself: the caller sees the error at its await."""

    async def needs_more(ask: Ask, needed):
        return needed

    bus = LocalRequestBus(modifiers=SHAPES[shape](Recorder()) + ([RaisingLayer()] if failure == "layer_raises" else []))
    bus.register(needs_more)
    expected = (TypeError, "needed") if failure == "handler_binds_badly" else (Boom, "the layer failed")

    async def main():
        awaitable = bus.execute(Ask(1))  # must not raise here
        with pytest.raises(expected[0], match=expected[1]):
            await awaitable
        if failure == "handler_binds_badly":
            assert await bus.execute(Ask(1), needed="given") == "given"

    asyncio.run(main())


@shapes
def test_a_type_error_from_the_handler_passes_through_unchanged(shape):
    async def typed(ask: Ask) -> object:
        raise TypeError("the handler's own")

    bus, _ = make_bus(shape, handler=typed)
    with pytest.raises(TypeError, match="^the handler's own$"):
        asyncio.run(bus.execute(Ask(1)))
