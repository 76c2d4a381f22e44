"""Engine hardening (fault probes and differential runs): what the compiled engine got wrong
that the pure one, or Python itself, gets right. Every test runs on both engines.

- a StopIteration escaping a hook (or a plain ``def`` handler behind one) ends the dispatch
  with ``RuntimeError('coroutine raised StopIteration')``, as a coroutine would, also after a
  suspension; it never wedges a task nor passes for a return;
- a runaway cascade of dispatches raises RecursionError (it used to overflow the C stack);
- exception chains read as the nested ``try`` blocks the hooks stand for;
- nothing of a dispatch through a plain-function layer runs before it is awaited;
- a class equal to a registered one through its metaclass is routed;
- generator-based coroutines are awaitables like any other;
- ``ActionSubject.inject`` set to any mapping, a dispatch awaited twice and a value sent
  into one not yet started behave as on a coroutine.
"""

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass

import pytest

import mediator
from mediator import Hook
from mediator.common.modifiers import ModifierFactory
from mediator.errors import EventHandlerErrors
from mediator.event import LocalEventBus
from mediator.request import LocalRequestBus


@dataclass
class Ask:
    name: str = "ask"


@dataclass
class Told:
    name: str = "told"


def run(coroutine):
    return asyncio.run(coroutine)


def stop():
    """What ``next()`` on an empty iterator does: raise StopIteration."""
    return next(iter(()))


class StopIn(Hook):
    """A hook whose ``stage`` raises StopIteration."""

    def __init__(self, stage):
        super().__init__(**{stage: lambda *args: stop()})


class Record(Hook):
    """A hook that records what its error stage sees."""

    def __init__(self):
        self.seen = []

    def error(self, subject, error):
        self.seen.append(error)


async def answer(ask: Ask):
    return ask.name


async def answer_later(ask: Ask):
    await asyncio.sleep(0)
    return ask.name


def answer_stopping(ask: Ask):  # a plain def handler
    return stop()


def assert_stop_iteration_error(error):
    assert type(error) is RuntimeError
    assert str(error) == "coroutine raised StopIteration"
    assert type(error.__cause__) is StopIteration


# -- 1. StopIteration --------------------------------------------------------------------

STOPPING = [
    pytest.param([StopIn("before")], answer, id="before"),
    pytest.param([StopIn("after")], answer, id="after"),
    pytest.param([StopIn("after")], answer_later, id="after-a-suspension"),
    pytest.param([Hook(after=lambda subject, result: result)], answer_stopping, id="plain-def-handler"),
    pytest.param([StopIn("error"), Hook(before=lambda s, i: 1 / 0)], answer, id="error"),
]


@pytest.mark.parametrize("hooks, handler", STOPPING)
def test_a_stop_iteration_behind_hooks_ends_execute_with_a_runtime_error(hooks, handler):
    bus = LocalRequestBus(modifiers=hooks)
    bus.register(handler)

    async def main():
        with pytest.raises(RuntimeError) as caught:
            await asyncio.wait_for(bus.execute(Ask()), 10)
        assert_stop_iteration_error(caught.value)
        # and in a task of its own, which must finish
        task = asyncio.ensure_future(bus.execute(Ask()))
        await asyncio.wait([task], timeout=10)
        assert task.done()
        assert_stop_iteration_error(task.exception())

    run(main())


@pytest.mark.parametrize("hooks, handler", STOPPING)
@pytest.mark.parametrize("strategy", ["concurrent", "sequential"])
def test_a_stop_iteration_behind_hooks_is_reported_by_an_awaited_publish(hooks, handler, strategy):
    bus = LocalEventBus()
    bus.register(_for_told(handler), modifiers=hooks)
    done = []

    async def other(told: Told):
        done.append(told.name)

    bus.register(other)

    async def main():
        with pytest.raises(EventHandlerErrors) as caught:
            await asyncio.wait_for(bus.publish(Told(), strategy=strategy), 10)
        (error,) = caught.value.exceptions
        assert_stop_iteration_error(error)
        assert done == ["told"]

    run(main())


@pytest.mark.parametrize("hooks, handler", STOPPING)
def test_a_stop_iteration_behind_hooks_goes_to_on_error_in_the_background(hooks, handler):
    failures = []
    bus = LocalEventBus(on_error=lambda error, event, handler: failures.append(error))
    bus.register(_for_told(handler), modifiers=hooks)

    async def main():
        await bus.publish(Told())
        await asyncio.wait_for(bus.drain(), 10)
        await asyncio.wait_for(bus.aclose(timeout=5), 10)

    run(main())
    (error,) = failures
    assert_stop_iteration_error(error)


def _for_told(handler):
    """``handler`` as an event handler of ``Told``, the same kind of function."""
    if asyncio.iscoroutinefunction(handler):

        async def on_told(told: Told):
            return await handler(Ask(told.name))

    else:

        def on_told(told: Told):
            return handler(Ask(told.name))

    on_told.__name__ = on_told.__qualname__ = f"{handler.__name__}_on_told"
    return on_told


def test_error_hooks_see_the_stop_iteration_itself():
    record = Record()
    bus = LocalRequestBus(modifiers=[record, Hook(after=lambda subject, result: result)])
    bus.register(answer_stopping)
    with pytest.raises(RuntimeError) as caught:
        run(bus.execute(Ask()))
    assert_stop_iteration_error(caught.value)
    assert [type(error) for error in record.seen] == [StopIteration]


# -- 2. runaway cascades ---------------------------------------------------------------------

CASCADE = textwrap.dedent(
    """
    import asyncio, sys
    from dataclasses import dataclass
    import mediator
    from mediator import Hook
    from mediator.common.modifiers import ModifierFactory
    from mediator.errors import EventHandlerErrors
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    assert mediator.COMPILED is (sys.argv[1] == "compiled"), mediator.COMPILED

    @dataclass
    class A:
        pass

    @dataclass
    class B:
        pass

    class Layer(ModifierFactory):
        def create(self, call, **kwargs):
            return lambda action: call(action)

    def leaf(error):
        while isinstance(error, EventHandlerErrors):
            error = error.exceptions[0]
        return error

    async def main(case):
        if case == "publish":
            bus = LocalEventBus(sync_mode=True)
            def on_a(event: A):
                return bus.publish(B())
            def on_b(event: B):
                return bus.publish(A())
            bus.register(on_a)
            bus.register(on_b)
            try:
                await bus.publish(A())
            except EventHandlerErrors as error:
                return type(leaf(error)).__name__
            return "no error"
        modifiers = {"hooked": [Hook(after=lambda subject, result: result)], "layered": [Layer()]}[case]
        bus = LocalRequestBus(modifiers=modifiers)
        def on_a(request: A):
            return bus.execute(B())
        def on_b(request: B):
            return bus.execute(A())
        bus.register(on_a)
        bus.register(on_b)
        try:
            await bus.execute(A())
        except RecursionError:
            return "RecursionError"
        return "no error"

    print(asyncio.run(main(sys.argv[2])))
    """
)


@pytest.mark.parametrize("case", ["publish", "hooked", "layered"])
def test_a_runaway_cascade_of_dispatches_raises_recursion_error(case, tmp_path):
    """A plain ``def`` handler returning another dispatch, A -> B -> A: a RecursionError
    (in ``EventHandlerErrors`` for a publish), never a crash. Run in a process of its own,
    so that a crash fails this test alone."""
    script = tmp_path / "cascade.py"
    script.write_text(CASCADE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(mediator.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    engine = "compiled" if mediator.COMPILED else "pure"
    if not mediator.COMPILED:
        env["MEDIATOR_NO_EXTENSIONS"] = "1"
    done = subprocess.run(
        [sys.executable, str(script), engine, case], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "RecursionError"


def test_nested_dispatches_leave_the_recursion_count_as_they_found_it():
    """Many dispatches nested one level in C, one after another: none is left counted."""
    bus = LocalEventBus(sync_mode=True)
    seen = []

    def relay(ask: Ask):
        return bus.publish(Told(ask.name))

    async def told(event: Told):
        seen.append(event.name)

    bus.register(relay)
    bus.register(told)
    requests = LocalRequestBus(modifiers=[Hook(after=lambda subject, result: result)])

    def outer(ask: Ask):
        return inner_bus.execute(Told(ask.name))

    inner_bus = LocalRequestBus(modifiers=[Hook(after=lambda subject, result: result)])

    async def inner(told: Told):
        return told.name

    requests.register(outer)
    inner_bus.register(inner)

    async def main():
        for index in range(20_000):
            await bus.publish(Ask(str(index)))
            assert await requests.execute(Ask(str(index))) == str(index)

    run(main())
    assert len(seen) == 20_000


# -- 6. exception chains ---------------------------------------------------------------------


class Raise(Hook):
    """A hook whose ``stage`` raises a new error named ``name``."""

    def __init__(self, stage, name):
        def raising(*args):
            raise LookupError(name)

        super().__init__(**{stage: raising})


class Noted(Exception):
    pass


async def fail(ask: Ask):
    try:
        raise KeyError("inside the handler")
    except KeyError:
        raise Noted("the handler failed")


async def by_hand(hooks, handler, subject):
    """What the hooks stand for: nested ``try`` blocks written by hand, outermost first."""

    async def layer(depth):
        if depth == len(hooks):
            return await handler(subject)
        hook = hooks[depth]
        hook.before(subject, {})
        try:
            result = await layer(depth + 1)
        except Exception as error:
            hook.error(subject, error)
            raise
        return hook.after(subject, result)

    return await layer(0)


def chain(error):
    links = []
    while error is not None:
        links.append((type(error).__name__, str(error)))
        error = error.__context__
    return links


CHAINS = [
    pytest.param([Hook(after=lambda subject, result: result)], id="through-an-after"),
    pytest.param([Record()], id="through-an-error-hook"),
    pytest.param([Raise("error", "replaced")], id="replaced-by-an-error-hook"),
    pytest.param([Raise("error", "replaced"), Raise("after", "after failed")], id="an-after-failure-replaced"),
    pytest.param([Raise("error", "replaced"), Raise("before", "refused")], id="a-before-failure-replaced"),
    pytest.param([Raise("error", "outer"), Raise("error", "inner")], id="replaced-twice"),
]


@pytest.mark.parametrize("hooks", CHAINS)
@pytest.mark.parametrize("in_except", [False, True], ids=["plain", "in-except"])
def test_exception_chains_read_as_nested_try_blocks(hooks, in_except):
    bus = LocalRequestBus(modifiers=hooks)
    bus.register(fail)

    async def outcome(dispatch):
        try:
            if in_except:
                try:
                    raise ValueError("the caller's own")
                except ValueError:
                    await dispatch()
            else:
                await dispatch()
        except Exception as error:
            return chain(error)
        raise AssertionError("it did not fail")

    async def main():
        expected = await outcome(lambda: by_hand(hooks, fail, Ask()))
        assert await outcome(lambda: bus.execute(Ask())) == expected
        return expected

    expected = run(main())
    assert ("Noted", "the handler failed") in expected or ("LookupError", "refused") in expected


@pytest.mark.parametrize(
    "hook", [Hook(before=lambda subject, inject: None), Hook(error=lambda subject, error: None)], ids=["before", "error"]
)
def test_a_run_started_by_a_strategy_in_an_except_block_chains_as_an_awaited_task(hook):
    """A hooked handler that suspends in a custom strategy's ``run.start()`` and then raises:
    its error comes out of a task awaited in the publisher's ``except`` block, which (as
    ``await task`` there does by hand) takes the publisher's handled error as context."""
    bus = LocalEventBus(strategy="concurrent")

    @bus.register(modifiers=[hook])
    async def suspends_then_raises(told: Told):
        await asyncio.sleep(0)
        raise ValueError("handler")

    async def in_turn(event, runs):
        for handler_run in runs:
            await handler_run.start()

    async def by_hand():
        async def handler():
            await asyncio.sleep(0)
            raise ValueError("handler")

        task = asyncio.ensure_future(handler())
        try:
            raise KeyError("outer")
        except KeyError:
            try:
                await task
            except ValueError as error:
                return error

    async def published():
        try:
            raise KeyError("outer")
        except KeyError:
            try:
                await bus.publish(Told(), strategy=in_turn)
            except ValueError as error:
                return error

    expected, error = run(by_hand()), run(published())
    assert str(error) == "handler"
    assert repr(error.__context__) == repr(expected.__context__) == "KeyError('outer')"


# -- 7. a plain-function layer ---------------------------------------------------------------


class PlainLayer(ModifierFactory):
    """A pass-through layer written as a plain function: it returns the inner awaitable."""

    def create(self, call, **kwargs):
        return lambda action: call(action)


@pytest.mark.parametrize("hooks", [[], [Hook(after=lambda subject, result: result)]], ids=["bare", "hooked"])
def test_a_plain_def_handler_behind_a_plain_function_layer_runs_when_awaited(hooks):
    ran = []

    def handler(ask: Ask):
        ran.append(ask.name)
        return ask.name

    bus = LocalRequestBus(modifiers=[PlainLayer(), *hooks])
    bus.register(handler)

    async def main():
        first = bus.execute(Ask("first"))
        second = bus.execute(Ask("second"))
        closed = bus.execute(Ask("closed"))
        assert ran == []
        closed.close()
        assert await second == "second"
        assert await first == "first"
        assert ran == ["second", "first"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # what the closed one left unawaited
        run(main())
        gc.collect()
    assert ran == ["second", "first"]


# -- 8. equality through a metaclass ---------------------------------------------------------


class Same(type):
    """Makes its classes equal to ``Ask`` (and hash as it does)."""

    def __eq__(cls, other):
        return other is Ask or other is cls

    def __hash__(cls):
        return hash(Ask)


class AskAlias(metaclass=Same):
    name = "alias"


@pytest.mark.parametrize("polymorphic", [False, True])
@pytest.mark.parametrize("inject", [{}, {"extra": 1}])
def test_execute_routes_a_class_equal_to_a_registered_one(polymorphic, inject):
    bus = LocalRequestBus(polymorphic=polymorphic)
    bus.register(answer)
    assert bus.handlers_for(AskAlias) == bus.handlers_for(Ask)
    assert run(bus.execute(AskAlias(), **inject)) == "alias"
    assert run(bus.execute(obj=AskAlias())) == "alias"
    assert run(bus.execute(Ask())) == "ask"


# -- 9. generator-based coroutines -----------------------------------------------------------


@types.coroutine
def awaiting(awaitable):
    """``await awaitable`` in a generator-based coroutine."""
    return (yield from awaitable.__await__())


class GeneratorLayer(ModifierFactory):
    def create(self, call, **kwargs):
        @types.coroutine
        def layer(action):
            action.inject["tag"] = "generator"
            result = yield from awaiting(call(action))
            return result

        return layer


async def tagged(ask: Ask, tag: str = "none"):
    await asyncio.sleep(0)
    return f"{ask.name}:{tag}"


def test_a_generator_based_coroutine_is_a_modifier_layer():
    bus = LocalRequestBus(modifiers=[GeneratorLayer()])
    bus.register(tagged)
    assert run(bus.execute(Ask())) == "ask:generator"


async def refuses(ask: Ask, tag: str = "none"):
    await asyncio.sleep(0)
    raise TypeError(f"{ask.name} refused")


def test_a_handler_type_error_through_a_generator_based_layer_is_the_handler_s():
    bus = LocalRequestBus(modifiers=[GeneratorLayer()])
    bus.register(refuses)
    with pytest.raises(TypeError, match="^ask refused$"):
        run(bus.execute(Ask()))


def test_a_generator_based_coroutine_is_a_publish_strategy():
    bus = LocalEventBus()
    seen = []

    async def on_told(told: Told):
        await asyncio.sleep(0)
        seen.append(told.name)

    bus.register(on_told)

    @types.coroutine
    def in_turn(event, runs):
        for handler_run in runs:
            yield from awaiting(handler_run.start())

    run(bus.publish(Told(), strategy=in_turn))
    assert seen == ["told"]


# -- 11. what a coroutine does ---------------------------------------------------------------


class SetInject(ModifierFactory):
    def __init__(self, value):
        self.value = value

    def create(self, call, **kwargs):
        async def layer(action):
            action.inject = self.value
            return await call(action)

        return layer


async def takes_user(ask: Ask, user: str = "nobody"):
    return user


INNER = [
    pytest.param([], id="bare"),
    pytest.param([Hook(before=lambda subject, inject: None)], id="hooked"),
]


@pytest.mark.parametrize("hooks", INNER)
@pytest.mark.parametrize(
    "mapping", [types.MappingProxyType({"user": "ada"}), {"user": "ada"}], ids=["mappingproxy", "dict"]
)
def test_a_layer_may_set_inject_to_any_mapping(mapping, hooks):
    bus = LocalRequestBus(modifiers=[SetInject(mapping), *hooks])
    bus.register(takes_user)
    assert run(bus.execute(Ask())) == "ada"
    assert run(bus.execute(Ask(), user="bob")) == "ada"


@pytest.mark.parametrize("hooks", INNER)
def test_a_layer_setting_inject_to_a_non_mapping_gets_a_clear_error(hooks):
    bus = LocalRequestBus(modifiers=[SetInject([("user", "ada")]), *hooks])
    bus.register(takes_user)
    with pytest.raises(TypeError, match=r"set ActionSubject\.inject to a list: it must be a mapping of keyword arguments"):
        run(bus.execute(Ask()))


class PassThrough(ModifierFactory):
    def create(self, call, **kwargs):
        async def layer(action):
            return await call(action)

        return layer


def _dispatches():
    """(name, a function making a dispatch of ``Ask`` or ``Told`` on a fresh bus)."""

    def request(modifiers):
        def make():
            bus = LocalRequestBus(modifiers=modifiers)
            bus.register(takes_user)
            return bus.execute(Ask(), user="ada"), "ada"

        return make

    def publish():
        bus = LocalEventBus(sync_mode=True)

        async def on_told(told: Told):
            pass

        bus.register(on_told)
        return bus.publish(Told()), None

    return [
        pytest.param(request([]), id="plain"),
        pytest.param(request([PassThrough()]), id="modifier"),
        pytest.param(request([PlainLayer()]), id="plain-function-layer"),
        pytest.param(request([Hook(after=lambda subject, result: result)]), id="hooked"),
        pytest.param(publish, id="publish"),
    ]


@pytest.mark.parametrize("make", _dispatches())
def test_a_dispatch_awaited_twice_fails_as_a_coroutine_does(make):
    async def main():
        dispatch, expected = make()
        assert await dispatch == expected
        with pytest.raises(RuntimeError, match="^cannot reuse already awaited coroutine$"):
            await dispatch

    run(main())


@pytest.mark.parametrize("make", _dispatches())
def test_a_value_sent_into_a_dispatch_not_yet_started_is_refused_and_it_stays_usable(make):
    async def main():
        dispatch, expected = make()
        with pytest.raises(TypeError, match="^can't send non-None value to a just-started coroutine$"):
            dispatch.send(1)
        assert await dispatch == expected

    run(main())
