"""How ``publish`` and ``execute`` are called, and what ``publish`` hands back.

``publish`` behaves as the ``async def`` it was in python-mediator 0.7, on both engines:
nothing runs until it is awaited, a publish never awaited is reported, and the awaitable
suits ``create_task``, cancellation and ``close``. Both methods take their object by
position or as ``obj=``, as a ``def method(self, obj, **kwargs)`` does, and both are
coroutine functions to the checks that code runs to decide whether to await a callable.
"""

import asyncio
import gc
import inspect
import sys
import warnings
from dataclasses import dataclass

import pytest

import mediator
from mediator.event import LocalEventBus
from mediator.event.strategies import PublishStrategy
from mediator.request import LocalRequestBus


@dataclass
class Shipped:
    order: int


@dataclass
class Ship:
    order: int


class Forward(PublishStrategy):
    """A custom strategy that starts every run and returns a value of its own."""

    async def __call__(self, event, runs):
        for run in runs:
            await run.start()
        return "the strategy's own value"


STRATEGIES = ["background", "concurrent", "sequential", "custom"]


def event_bus(strategy, ran):
    bus = LocalEventBus(strategy=Forward() if strategy == "custom" else strategy)

    @bus.register
    async def record(event: Shipped, **inject) -> None:
        ran.append((event, inject))

    return bus


async def settle(bus):
    await bus.drain()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_publish_runs_nothing_until_it_is_awaited(strategy):
    ran = []
    bus = event_bus(strategy, ran)

    async def main():
        publishing = bus.publish(Shipped(1), note="n")
        await asyncio.sleep(0)
        assert ran == []
        assert await publishing is None  # a custom strategy's own value is not returned
        await settle(bus)

    asyncio.run(main())
    assert ran == [(Shipped(1), {"note": "n"})]


def test_a_publish_never_awaited_warns_and_runs_nothing():
    ran = []
    bus = event_bus("concurrent", ran)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bus.publish(Shipped(1))
        gc.collect()
    assert ran == []
    messages = [str(warning.message) for warning in caught if warning.category is RuntimeWarning]
    assert messages == ["coroutine 'EventDispatcher.publish' was never awaited"]


def test_closing_an_unawaited_publish_runs_nothing_and_is_not_reported():
    ran = []
    bus = event_bus("concurrent", ran)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        publishing = bus.publish(Shipped(1))
        publishing.close()
        publishing.close()  # harmless, as for a coroutine
        del publishing
        gc.collect()
    assert ran == []
    assert not [warning for warning in caught if "never awaited" in str(warning.message)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_publish_cancelled_before_it_starts_runs_nothing(strategy):
    ran = []
    bus = event_bus(strategy, ran)

    async def main():
        task = asyncio.create_task(bus.publish(Shipped(1)))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(bus)

    asyncio.run(main())
    assert ran == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_publish_runs_as_a_task_and_in_gather(strategy):
    ran = []
    bus = event_bus(strategy, ran)

    async def main():
        assert await asyncio.create_task(bus.publish(Shipped(1))) is None
        assert await asyncio.gather(bus.publish(Shipped(2)), bus.publish(Shipped(3))) == [None, None]
        await settle(bus)

    asyncio.run(main())
    assert sorted(event.order for event, _ in ran) == [1, 2, 3]


def test_awaiting_one_publish_twice_is_refused():
    ran = []
    bus = event_bus("concurrent", ran)

    async def main():
        publishing = bus.publish(Shipped(1))
        await publishing
        with pytest.raises(RuntimeError):
            await publishing

    asyncio.run(main())
    assert len(ran) == 1


def test_a_value_sent_into_a_publish_that_has_not_started_is_refused():
    ran = []
    bus = event_bus("concurrent", ran)
    publishing = bus.publish(Shipped(1))
    with pytest.raises(TypeError, match="just-started coroutine"):
        publishing.send("a value")
    publishing.close()
    assert ran == []


def test_an_error_thrown_into_a_publish_that_has_not_started_is_raised_and_runs_nothing():
    ran = []
    bus = event_bus("concurrent", ran)
    publishing = bus.publish(Shipped(1))
    with pytest.raises(KeyError):
        publishing.throw(KeyError("thrown"))
    with pytest.raises(RuntimeError):
        publishing.send(None)  # it is over, as a coroutine would be
    assert ran == []


# -- the object by position or by name ------------------------------------------------


def request_bus():
    bus = LocalRequestBus()

    @bus.register
    async def ship(command: Ship, **inject) -> tuple:
        return command.order, inject

    return bus


def test_execute_takes_its_request_by_name():
    bus = request_bus()

    async def main():
        assert await bus.execute(obj=Ship(1)) == (1, {})
        assert await bus.execute(obj=Ship(2), note="n") == (2, {"note": "n"})
        assert await bus.execute(note="n", obj=Ship(3)) == (3, {"note": "n"})

    asyncio.run(main())


def test_publish_takes_its_event_by_name():
    ran = []
    bus = event_bus("concurrent", ran)

    async def main():
        await bus.publish(obj=Shipped(1))
        await bus.publish(note="n", obj=Shipped(2))

    asyncio.run(main())
    assert ran == [(Shipped(1), {}), (Shipped(2), {"note": "n"})]


@pytest.mark.parametrize("method", ["execute", "publish"])
@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), {}, "missing 1 required"),
        ((), {"note": "n"}, "missing 1 required"),
        ((Ship(1), Ship(2)), {}, "positional argument"),
        ((Ship(1),), {"obj": Ship(2)}, "multiple values for argument 'obj'"),
    ],
)
def test_a_call_that_binds_badly_is_a_type_error_at_once(method, args, kwargs, message):
    bus = request_bus() if method == "execute" else event_bus("concurrent", [])
    with pytest.raises(TypeError, match=message):
        getattr(bus, method)(*args, **kwargs)


@pytest.mark.parametrize("strategy", ["background", "concurrent", "sequential"])
def test_a_handler_that_fails_as_it_is_called_is_reported_and_the_next_one_runs(strategy):
    """A handler called without the argument it needs fails before it has a coroutine."""
    from mediator.errors import EventHandlerErrors

    reported, ran = [], []
    bus = LocalEventBus(strategy=strategy, on_error=lambda error, event, handler: reported.append(error))

    @bus.register
    async def needs_more(event: Shipped, needed) -> None:
        ran.append("never")

    @bus.register
    async def after(event: Shipped) -> None:
        ran.append("after")

    async def main():
        if strategy == "background":
            await bus.publish(Shipped(1))
            await bus.drain()
        else:
            with pytest.raises(EventHandlerErrors) as raised:
                await bus.publish(Shipped(1))
            reported.extend(raised.value.exceptions)

    asyncio.run(main())
    assert ran == ["after"]
    assert [type(error) for error in reported] == [TypeError]
    assert "needed" in str(reported[0])


# -- coroutine functions to introspection ------------------------------------------------

def inspect_sees(name):
    """Where ``inspect.iscoroutinefunction`` can tell: the pure ``publish`` is an ``async def``;
    the compiled methods are function-like objects, which it reads from 3.10 on; the pure
    ``execute`` is a ``def`` with a mark, which it reads from 3.12 on."""
    if mediator.COMPILED:
        return sys.version_info >= (3, 10)
    return "publish" in name or sys.version_info >= (3, 12)


def bus_methods():
    requests, events = LocalRequestBus(), LocalEventBus()
    return {
        "execute": requests.execute,
        "publish": events.publish,
        "LocalRequestBus.execute": LocalRequestBus.execute,
        "LocalEventBus.publish": LocalEventBus.publish,
    }


@pytest.mark.parametrize("name", list(bus_methods()))
def test_the_methods_are_coroutine_functions_to_asyncio(name):
    assert asyncio.iscoroutinefunction(bus_methods()[name])


@pytest.mark.parametrize("name", list(bus_methods()))
def test_the_methods_are_coroutine_functions_to_inspect(name):
    if not inspect_sees(name):
        pytest.skip("inspect cannot tell on this engine and Python version (see inspect_sees)")
    assert inspect.iscoroutinefunction(bus_methods()[name])


@pytest.mark.parametrize("name", ["execute", "publish"])
def test_the_methods_have_the_signature_of_an_async_def(name):
    parameters = inspect.signature(bus_methods()[name]).parameters
    assert [(p.name, p.kind) for p in parameters.values()] == [
        ("obj", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("inject", inspect.Parameter.VAR_KEYWORD),
    ]


def test_a_runner_that_awaits_coroutine_functions_and_threads_the_rest_loses_nothing():
    """What background-task runners (Starlette's, say) do: a callable that is not a coroutine
    function is called in a thread, where an awaitable it returns is dropped unawaited."""
    ran = []
    requests, events = LocalRequestBus(), LocalEventBus(sync_mode=True)

    @requests.register
    async def ship(command: Ship) -> None:
        ran.append(command)

    @events.register
    async def shipped(event: Shipped) -> None:
        ran.append(event)

    async def run_in_background(fn, *args):
        if asyncio.iscoroutinefunction(fn) or inspect.iscoroutinefunction(fn):
            await fn(*args)
        else:
            await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def main():
        await run_in_background(requests.execute, Ship(1))
        await run_in_background(events.publish, Shipped(1))

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        asyncio.run(main())
    assert ran == [Ship(1), Shipped(1)]


def test_the_methods_called_from_the_class_and_through_super():
    ran = []

    class AuditedBus(LocalRequestBus):
        async def execute(self, obj, **inject):
            ran.append("audited")
            return await super().execute(obj, **inject)

    bus = AuditedBus()

    @bus.register
    async def ship(command: Ship) -> int:
        return command.order

    async def main():
        return await bus.execute(Ship(7)), await LocalRequestBus.execute(bus, Ship(8))

    assert asyncio.run(main()) == (7, 8)
    assert ran == ["audited"]


def test_buses_of_two_classes_in_turn_each_reach_their_own_handlers():
    class One(LocalRequestBus):
        pass

    class Two(LocalRequestBus):
        pass

    one, two = One(), Two()
    one.register(returning(1))
    two.register(returning(2))

    async def main():
        return [await bus.execute(Ship(0)) for bus in (one, two, one, two)]

    assert asyncio.run(main()) == [1, 2, 1, 2]


def returning(value):
    async def handler(command: Ship) -> int:
        return value

    return handler


@pytest.mark.skipif(not mediator.COMPILED, reason="the pure engine's methods are plain functions")
@pytest.mark.parametrize("method", ["execute", "publish"])
def test_a_compiled_method_called_on_something_else_is_a_type_error(method):
    unbound = getattr(LocalRequestBus if method == "execute" else LocalEventBus, method)
    with pytest.raises(TypeError, match=f"descriptor '{method}' for .* doesn't apply to a 'int' object"):
        unbound(1, Ship(1))
    with pytest.raises(TypeError, match=f"descriptor '{method}' of .* needs an argument"):
        unbound()
    LocalRequestBus().execute(Ship(1)).close()  # a bus of a class it has seen still passes
