"""Supervision that holds whatever user code does: found by fault probes of both engines.

- A plain ``def`` handler raising ``CancelledError`` or ``StopIteration`` is a failure
  like any other, reported the way its strategy reports failures.
- No user object's ``repr``, ``eq`` or ``hash`` can break a publish, a log line or an
  error message: such an object is described by its class and address.
- Error hooks chain their exceptions as nested ``try`` blocks written by hand would,
  also when the dispatch is closed and its handler ignores ``GeneratorExit``.
- Any number of hooks can be stacked (1000 on both engines).
- A dispatch never awaited is reported under its handler's name, not an engine internal.
"""

import asyncio
import gc
import logging
import warnings
from dataclasses import dataclass

import pytest

import mediator
from mediator import Hook
from mediator.common.factory import (
    HandlerFactoryCascadeError,
    IncompatibleHandlerFactoryCascadeError,
    MethodHandlerPolicy,
)
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import CollisionHandlerStoreError, LookupHandlerStoreError
from mediator.errors import EventBusClosedError, EventHandlerErrors
from mediator.event import LocalEventBus
from mediator.modifiers import timeout
from mediator.request import LocalRequestBus

STRATEGIES = ["background", "concurrent", "sequential"]


@dataclass
class Ask:
    value: int = 0


class Boom(Exception):
    pass


class Inner(Exception):
    pass


class Outer(Exception):
    pass


class Hostile:
    """An event whose repr, str, eq and hash all raise."""

    def __repr__(self):
        raise ValueError("no repr")

    def __str__(self):
        raise ValueError("no str")

    def __eq__(self, other):
        raise ValueError("no eq")

    def __hash__(self):
        raise ValueError("no hash")


class HostileHandler:
    """A handler object (callable) whose repr, eq and hash raise."""

    def __init__(self, log):
        self.log = log

    def __call__(self, event: Hostile):
        self.log.append("object")

    def __repr__(self):
        raise ValueError("no repr")

    def __eq__(self, other):
        raise ValueError("no eq")

    def __hash__(self):
        raise ValueError("no hash")


class Errors:
    """An ``on_error`` hook that records ``(error type, handler function)``."""

    def __init__(self):
        self.calls = []

    def __call__(self, error, event, handler):
        self.calls.append((type(error), handler.obj))


async def failures_of(bus, event):
    """Publish ``event``, let background runs finish: the errors ``publish`` raised."""
    try:
        await bus.publish(event)
    except EventHandlerErrors as group:
        return list(group.exceptions)
    finally:
        await asyncio.wait_for(bus.drain(), 2)
    return []


# --- a plain def handler's CancelledError and StopIteration -------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_sync_handler_raising_cancelled_error_is_reported_and_the_others_run(strategy):
    ran = []
    errors = Errors()
    bus = LocalEventBus(strategy=strategy, on_error=errors)

    def cancelled(event: Ask):
        raise asyncio.CancelledError()  # what .result() of a cancelled future raises

    def after(event: Ask):
        ran.append(event)

    bus.register(cancelled)
    bus.register(after)

    async def main():
        return await failures_of(bus, Ask(1))

    assert asyncio.run(main()) == []  # an exception group holds no cancellation
    assert ran == [Ask(1)]
    assert errors.calls == [(asyncio.CancelledError, cancelled)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_sync_handler_raising_stop_iteration_is_a_failure_not_a_return(strategy):
    ran = []
    errors = Errors()
    bus = LocalEventBus(strategy=strategy, on_error=errors)

    def empty(event: Ask):
        return next(iter(()))

    bus.register(empty)
    bus.register(_appender(ran))

    async def main():
        return await failures_of(bus, Ask(2))

    raised = asyncio.run(main())
    reported = [type(error) for error in raised] + [kind for kind, _ in errors.calls]
    assert reported == [StopIteration]
    assert [str(error) for error in raised] == ([] if strategy == "background" else [""])
    assert ran == [Ask(2)]


def _appender(log):
    def append(event: Ask):
        log.append(event)

    return append


# --- user objects whose repr, eq or hash raise ------------------------------------------


@pytest.mark.parametrize("strategy", ["concurrent", "sequential"])
def test_an_event_with_a_failing_repr_eq_and_hash_is_reported_in_full(strategy):
    """Every handler runs, the failures come back as one group, with notes that describe
    the event by class, and nothing is left running or unretrieved."""
    log = []
    bus = LocalEventBus(strategy=strategy)

    async def suspends_then_fails(event: Hostile):
        await asyncio.sleep(0)
        log.append("suspended")
        raise Boom("late")

    def fails(event: Hostile):
        log.append("sync")
        raise Boom("early")

    def last(event: Hostile):
        log.append("last")

    for handler in (suspends_then_fails, fails, last):
        bus.register(handler)

    async def main():
        errors = await failures_of(bus, Hostile())
        return errors, bus.pending

    errors, pending = asyncio.run(main())
    assert pending == 0
    assert sorted(error.args[0] for error in errors) == ["early", "late"]
    assert sorted(log) == ["last", "suspended", "sync"]
    for error in errors:
        (note,) = error.__notes__
        assert "Hostile object at 0x" in note and "repr() raised ValueError" in note


def test_the_default_error_log_describes_an_event_whose_repr_fails(caplog):
    bus = LocalEventBus()

    def fails(event: Hostile):
        raise Boom("logged")

    bus.register(fails)

    async def main():
        await bus.publish(Hostile())
        await asyncio.wait_for(bus.drain(), 2)

    with caplog.at_level(logging.ERROR, logger="mediator"):
        asyncio.run(main())
    (record,) = [r for r in caplog.records if r.name == "mediator"]
    message = record.getMessage()
    assert "fails" in message and "Hostile object at 0x" in message
    assert record.exc_info[1].args == ("logged",)


def test_a_failing_on_error_hook_is_logged_with_an_event_whose_repr_fails(caplog):
    def on_error(error, event, handler):
        raise Outer("hook")

    bus = LocalEventBus(on_error=on_error)

    def fails(event: Hostile):
        raise Boom("first")

    bus.register(fails)

    async def main():
        await bus.publish(Hostile())
        await asyncio.wait_for(bus.drain(), 2)

    with caplog.at_level(logging.ERROR, logger="mediator"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "mediator"]
    assert len(messages) == 2
    assert all("Hostile object at 0x" in message for message in messages)


def test_aclose_reports_the_runs_it_cancelled_on_an_event_whose_repr_fails(caplog):
    bus = LocalEventBus()

    async def hangs(event: Hostile):
        await asyncio.Event().wait()

    bus.register(hangs)

    async def main():
        event = Hostile()
        await bus.publish(event)
        await asyncio.sleep(0)
        cancelled = await bus.aclose(timeout=0.01)
        return event, cancelled

    with caplog.at_level(logging.WARNING, logger="mediator"):
        event, cancelled = asyncio.run(main())
    assert [(run.event is event, run.handler.obj) for run in cancelled] == [(True, hangs)]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "mediator"]
    assert "cancelled 1 handler run(s)" in message and "Hostile object at 0x" in message


def test_publish_on_a_closed_bus_refuses_an_event_whose_repr_fails():
    bus = LocalEventBus()

    async def main():
        await bus.aclose()
        await bus.publish(Hostile())

    with pytest.raises(EventBusClosedError, match="Hostile object at 0x"):
        asyncio.run(main())


def test_a_request_with_no_handler_and_a_failing_repr_raises_the_lookup_error():
    bus = LocalRequestBus()
    with pytest.raises(LookupHandlerStoreError, match="Hostile object at 0x"):
        asyncio.run(bus.execute(Hostile()))


def test_timeout_names_a_subject_whose_repr_fails():
    bus = LocalRequestBus(modifiers=[timeout(0.01)])

    async def hangs(request: Hostile):
        await asyncio.Event().wait()

    bus.register(hangs)
    with pytest.raises(asyncio.TimeoutError, match="Hostile object at 0x"):
        asyncio.run(bus.execute(Hostile()))


def test_a_modifier_returning_a_result_whose_repr_fails_is_a_type_error():
    class Wrong(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                await call(action)
                return Hostile()  # not an ActionResult

            return layer

    bus = LocalRequestBus(modifiers=[Wrong()])

    async def handler(request: Ask):
        return 1

    bus.register(handler)
    with pytest.raises(TypeError, match="returned <.*Hostile object at 0x.*must return an ActionResult"):
        asyncio.run(bus.execute(Ask()))


def test_handler_objects_whose_repr_eq_and_hash_fail_dispatch_and_collide_clearly():
    log = []
    events = LocalEventBus(strategy="concurrent", polymorphic=True)
    first, second = HostileHandler(log), HostileHandler(log)
    events.register(first)
    events.register(second)
    asyncio.run(events.publish(Hostile()))  # base-class resolution compares handlers
    assert log == ["object", "object"]

    class Handles:
        def __call__(self, request: Ask):
            return 1

        def __repr__(self):
            raise ValueError("no repr")

    requests = LocalRequestBus()
    requests.register(Handles())
    with pytest.raises(CollisionHandlerStoreError, match="Handles object at 0x"):
        requests.register(Handles())


def test_registering_objects_whose_repr_fails_raises_the_registration_error():
    class NoAnnotation:
        def handle(self, request):
            return 1

        def __repr__(self):
            raise ValueError("no repr")

    bus = LocalRequestBus(policies=[MethodHandlerPolicy("handle")])
    with pytest.raises(IncompatibleHandlerFactoryCascadeError, match="Hostile object at 0x"):
        bus.register(Hostile())  # not callable, no handle method
    with pytest.raises(HandlerFactoryCascadeError, match="NoAnnotation object at 0x.*no type annotation"):
        bus.register(NoAnnotation())


# --- exception chains of error hooks --------------------------------------------------------


def chain(error):
    """The ``__context__`` chain of ``error`` as ``(type, args)`` pairs."""
    links = []
    while error is not None:
        links.append((type(error), error.args))
        error = error.__context__
    return links


def raising(kind, message):
    def hook(subject, error):
        raise kind(message)

    return hook


def catching_inside(kind, message):
    """An error hook that raises from inside an ``except`` of its own."""

    def hook(subject, error):
        try:
            raise KeyError("inside")
        except KeyError:
            raise kind(message)

    return hook


@pytest.mark.parametrize(
    "outer",
    [
        raising,
        catching_inside,
    ],
)
def test_two_error_hooks_that_raise_chain_as_nested_try_blocks(outer):
    inner_hook, outer_hook = raising(Inner, "inner"), outer(Outer, "outer")

    async def handler(request: Ask):
        await asyncio.sleep(0)
        raise Boom("handler")

    bus = LocalRequestBus(modifiers=[Hook(error=outer_hook), Hook(error=inner_hook)])
    bus.register(handler)

    async def by_hand(request):
        try:
            try:
                return await handler(request)
            except Exception as error:
                inner_hook(request, error)
                raise
        except Exception as error:
            outer_hook(request, error)
            raise

    async def outcome(dispatch):
        try:
            await dispatch
        except Exception as error:
            return chain(error)

    async def main():
        return await outcome(bus.execute(Ask())), await outcome(by_hand(Ask()))

    engine, hand = asyncio.run(main())
    assert engine == hand
    assert [kind for kind, _ in engine][:2] == [Outer, KeyError if outer is catching_inside else Inner]


@pytest.mark.parametrize("outer", [raising, None])
def test_an_after_hook_raising_inside_its_own_except_keeps_its_chain(outer):
    """An error hook around a failing ``after`` sees (and chains to) the error as raised."""
    after_hook, seen = catching_inside(Inner, "after"), []

    def outer_hook(subject, error):
        seen.append(chain(error))
        if outer is not None:
            outer(Outer, "outer")(subject, error)

    async def handler(request: Ask):
        return request.value

    bus = LocalRequestBus(modifiers=[Hook(error=outer_hook), Hook(after=after_hook)])
    bus.register(handler)

    async def by_hand(request):
        try:
            return after_hook(request, await handler(request))
        except Exception as error:
            outer_hook(request, error)
            raise

    async def outcome(dispatch):
        try:
            await dispatch
        except Exception as error:
            return chain(error)

    async def main():
        try:
            raise LookupError("the caller's")
        except LookupError:  # awaited where the caller handles an error of its own
            return await outcome(bus.execute(Ask())), await outcome(by_hand(Ask()))

    engine, hand = asyncio.run(main())
    assert engine == hand
    assert seen[0] == seen[1]
    assert [kind for kind, _ in seen[0]] == [Inner, KeyError, LookupError]


def test_an_error_hook_sees_the_error_of_a_closed_handler_that_ignored_generator_exit():
    """Closing a dispatch whose handler swallows ``GeneratorExit`` and awaits again raises
    ``RuntimeError``; the error hooks see it, as around a hand-written ``await``."""

    async def stubborn(request: Ask):
        try:
            await asyncio.sleep(0)
        except GeneratorExit:
            await asyncio.sleep(0)

    def closed(dispatch):
        dispatch.send(None)  # suspended in the handler
        with pytest.raises(RuntimeError, match="ignored GeneratorExit") as raised:
            dispatch.close()
        return raised.value

    engine_seen, hand_seen = [], []
    bus = LocalRequestBus(modifiers=[Hook(error=lambda subject, error: engine_seen.append(type(error)))])
    bus.register(stubborn)

    async def by_hand(request):
        try:
            return await stubborn(request)
        except Exception as error:
            hand_seen.append(type(error))
            raise

    closed(bus.execute(Ask()))
    closed(by_hand(Ask()))
    assert engine_seen == hand_seen == [RuntimeError]


# --- many hooks --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [199, 200, 1000])
@pytest.mark.parametrize("stages", ["after", "before_after", "before_after_error"])
def test_any_number_of_hooks_runs_in_order(count, stages):
    log = []

    def hook(index):
        before = (lambda subject, inject: log.append(("before", index))) if stages != "after" else None
        error = (lambda subject, error: log.append(("error", index))) if stages == "before_after_error" else None
        return Hook(before=before, after=lambda subject, result: result + [index], error=error)

    requests = LocalRequestBus(modifiers=[hook(index) for index in range(count)])
    events = LocalEventBus(strategy="concurrent", modifiers=[hook(index) for index in range(count)])
    results = []

    async def handler(request: Ask):
        return []

    async def listener(event: Ask):
        results.append("event")
        return []

    requests.register(handler)
    events.register(listener)

    async def main():
        result = await requests.execute(Ask())
        await events.publish(Ask())
        return result

    assert asyncio.run(main()) == list(reversed(range(count)))  # innermost after first
    assert results == ["event"]
    if stages != "after":
        assert log == [("before", index) for index in range(count)] * 2


# --- a dispatch never awaited ------------------------------------------------------------


class PassThrough(ModifierFactory):
    def create(self, call, **kwargs):
        async def layer(action):
            return await call(action)

        return layer


def unawaited_warnings(dispatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dispatch()
        gc.collect()
    return [str(warning.message) for warning in caught if "never awaited" in str(warning.message)]


def test_a_hooked_dispatch_never_awaited_is_reported_under_its_handlers_name():
    async def answer(request: Ask):
        return request.value

    def plain(request: Ask):
        return request.value

    for handler in (answer, plain):
        bus = LocalRequestBus(modifiers=[Hook(error=lambda subject, error: None)])
        bus.register(handler)
        assert unawaited_warnings(lambda: bus.execute(Ask())) == [
            f"coroutine '{handler.__qualname__}' was never awaited"
        ]


def test_a_dispatch_through_layers_never_awaited_names_no_engine_internal():
    async def answer(request: Ask):
        return request.value

    bus = LocalRequestBus(modifiers=[PassThrough(), Hook(error=lambda subject, error: None)])
    bus.register(answer)
    messages = unawaited_warnings(lambda: bus.execute(Ask()))
    assert messages  # reported, under the handler's name or its outermost layer's
    for message in messages:
        assert answer.__qualname__ in message or "PassThrough.create.<locals>.layer" in message, message


@pytest.mark.parametrize("layers", [1, 3])
def test_a_dispatch_through_factory_layers_never_awaited_names_its_handler(layers):
    async def answer(request: Ask):
        return request.value

    bus = LocalRequestBus(modifiers=[PassThrough() for _ in range(layers)])
    bus.register(answer)
    assert unawaited_warnings(lambda: bus.execute(Ask())) == [f"coroutine '{answer.__qualname__}' was never awaited"]


class Unrouted:
    pass


def test_a_dispatch_that_can_only_fail_never_awaited_is_reported():
    async def numbers(request: Ask):
        yield request.value

    bus = LocalRequestBus()
    bus.register(numbers)
    # no handler: the dispatch itself is named, as a coroutine of an async def execute
    assert unawaited_warnings(lambda: bus.execute(Unrouted())) == [
        "coroutine 'RequestDispatcher.execute' was never awaited"
    ]
    # a stream handler asked through execute: the handler is named
    assert unawaited_warnings(lambda: bus.execute(Ask())) == [f"coroutine '{numbers.__qualname__}' was never awaited"]
    with pytest.raises(TypeError, match="bus.stream"):
        asyncio.run(bus.execute(Ask()))
    with pytest.raises(LookupHandlerStoreError):
        asyncio.run(bus.execute(Unrouted()))
