"""Behaviour of LocalEventBus (sync and background modes) and EventAggregate."""

import asyncio
import collections.abc
import contextvars
import gc
import logging
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from mediator.common.factory import CallableHandlerPolicy
from mediator.event import (
    ConfigEventAggregateError,
    EventAggregate,
    EventAggregateError,
    EventPublish,
    EventPublisher,
    LocalEventBus,
)

try:
    ExceptionGroup = ExceptionGroup  # noqa: A001 - builtin on 3.11+
except NameError:  # Python 3.9 / PyPy
    from exceptiongroup import ExceptionGroup  # noqa: A001


@dataclass
class Evt:
    value: int = 0


@dataclass
class Other:
    value: int = 0


class Boom(Exception):
    pass


def run(coroutine):
    return asyncio.run(coroutine)


async def settle(turns=5):
    """Let the loop run a few turns (background tasks make progress)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def within(awaitable, timeout=1.0):
    """Await with a safety timeout: a deadlock fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, timeout)


def recorder(log, name, fail=False, suspend=False):
    async def handler(event: Evt):
        if suspend:
            await asyncio.sleep(0)
        log.append((name, event.value))
        if fail:
            raise Boom(f"{name} failed")

    handler.__qualname__ = f"handler_{name}"
    return handler


MODES = pytest.mark.parametrize("sync_mode", [True, False], ids=["sync", "background"])


# --- dispatch ------------------------------------------------------------------


def test_sync_mode_calls_every_handler_in_registration_order():
    log = []
    bus = LocalEventBus(sync_mode=True)
    for name in "abc":
        bus.register(recorder(log, name))

    @bus.register
    async def other(event: Other):
        log.append(("other", event.value))

    assert run(bus.publish(Evt(1))) is None
    assert log == [("a", 1), ("b", 1), ("c", 1)]


def test_sync_mode_returns_after_suspending_handlers_finished():
    log = []
    bus = LocalEventBus(sync_mode=True)
    bus.register(recorder(log, "slow", suspend=True))
    bus.register(recorder(log, "fast"))

    async def main():
        await bus.publish(Evt(2))
        return list(log)

    assert sorted(run(main())) == [("fast", 2), ("slow", 2)]


def test_background_mode_is_the_default_and_runs_handlers_as_tasks():
    """publish returns before the handlers finish; they finish once the loop runs."""
    log = []
    bus = LocalEventBus()
    assert bus.sync_mode is False

    async def main():
        release = asyncio.Event()

        @bus.register
        async def waiting(event: Evt):
            log.append("started")
            await release.wait()
            log.append("finished")

        await within(bus.publish(Evt()))
        assert "finished" not in log
        await settle()
        assert log == ["started"]
        release.set()
        await settle()
        assert log == ["started", "finished"]

    run(main())


def test_background_handlers_run_in_registration_order():
    log = []
    bus = LocalEventBus()
    for name in "abc":
        bus.register(recorder(log, name))

    async def main():
        await bus.publish(Evt(3))
        await settle()

    run(main())
    assert log == [("a", 3), ("b", 3), ("c", 3)]


def test_background_tasks_are_kept_referenced():
    """A handler waiting on a future only it holds survives a garbage collection."""
    futures = []
    finished = []
    bus = LocalEventBus()

    @bus.register
    async def handler(event: Evt):
        future = asyncio.get_running_loop().create_future()
        futures.append(weakref.ref(future))
        await future
        finished.append(event.value)

    async def main():
        await bus.publish(Evt(4))
        await settle()  # the handler now waits on its future
        gc.collect()
        future = futures[0]()
        assert future is not None, "the handler's task was garbage-collected"
        future.set_result(None)
        del future
        await settle()

    run(main())
    assert finished == [4]


@MODES
def test_event_without_handler_is_a_no_op(sync_mode):
    log = []
    bus = LocalEventBus(sync_mode=sync_mode)
    bus.register(recorder(log, "evt"))

    async def main():
        assert await bus.publish(Other(), a=1) is None
        assert await LocalEventBus(sync_mode=sync_mode).publish(Evt()) is None
        await settle()

    run(main())
    assert log == []


# --- failures ----------------------------------------------------------------------


def test_sync_mode_raises_a_group_of_every_failure_after_all_handlers_ran():
    log = []
    bus = LocalEventBus(sync_mode=True)
    bus.register(recorder(log, "fails_at_once", fail=True))
    bus.register(recorder(log, "ok_suspends", suspend=True))
    bus.register(recorder(log, "fails_later", fail=True, suspend=True))
    bus.register(recorder(log, "ok"))

    async def main():
        with pytest.raises(ExceptionGroup) as caught:
            await bus.publish(Evt(5))
        # every handler had finished when the group reached the caller
        assert sorted(log) == sorted([("fails_at_once", 5), ("ok_suspends", 5), ("fails_later", 5), ("ok", 5)])
        return caught.value

    group = run(main())
    assert "Evt" in str(group)
    messages = sorted(str(error) for error in group.exceptions)
    assert messages == ["fails_at_once failed", "fails_later failed"]
    for error in group.exceptions:
        assert isinstance(error, Boom)
        name = str(error).split()[0]
        notes = "\n".join(error.__notes__)
        assert f"handler_{name}" in notes
        assert "Evt(value=5)" in notes


def test_sync_mode_single_failure_is_still_a_group():
    bus = LocalEventBus(sync_mode=True)
    bus.register(recorder([], "only", fail=True))
    with pytest.raises(ExceptionGroup) as caught:
        run(bus.publish(Evt()))
    [error] = caught.value.exceptions
    assert isinstance(error, Boom)


@pytest.mark.parametrize("suspend", [False, True], ids=["at-once", "after-suspending"])
def test_background_failure_is_logged_with_traceback(caplog, suspend):
    bus = LocalEventBus()
    bus.register(recorder([], "bad", fail=True, suspend=suspend))

    async def main():
        with caplog.at_level(logging.ERROR, logger="mediator"):
            await bus.publish(Evt(6))
            await settle()

    run(main())
    gc.collect()
    records = [record for record in caplog.records if record.name == "mediator"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)
    assert record.exc_info[2] is not None
    assert "handler_bad" in record.getMessage()
    assert "Evt(value=6)" in record.getMessage()
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


def test_background_failure_does_not_stop_the_other_handlers(caplog):
    log = []
    bus = LocalEventBus()
    bus.register(recorder(log, "bad", fail=True))
    bus.register(recorder(log, "good", suspend=True))

    async def main():
        with caplog.at_level(logging.ERROR, logger="mediator"):
            await bus.publish(Evt(7))
            await settle()

    run(main())
    assert log == [("bad", 7), ("good", 7)]
    assert [r.exc_info[1].args[0] for r in caplog.records if r.name == "mediator"] == ["bad failed"]


# --- concurrency and cancellation ----------------------------------------------------


def test_sync_mode_runs_suspending_handlers_concurrently():
    """Each handler waits for the other one: run one after the other, they would deadlock."""
    log = []
    bus = LocalEventBus(sync_mode=True)

    async def main():
        first_done, second_done = asyncio.Event(), asyncio.Event()

        @bus.register
        async def first(event: Evt):
            await second_done.wait()
            log.append("first")
            first_done.set()

        @bus.register
        async def second(event: Evt):
            second_done.set()
            await first_done.wait()
            log.append("second")

        await within(bus.publish(Evt()))

    run(main())
    assert log == ["first", "second"]


def test_cancelling_a_sync_publish_cancels_the_suspended_handlers():
    started = []
    cancelled = []
    bus = LocalEventBus(sync_mode=True)

    def waiter(name):
        async def handler(event: Evt):
            started.append(name)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return handler

    bus.register(waiter("a"))
    bus.register(waiter("b"))

    async def main():
        publishing = asyncio.create_task(bus.publish(Evt()))
        await settle()
        assert sorted(started) == ["a", "b"]
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing
        await settle()

    run(main())
    assert sorted(cancelled) == ["a", "b"]


@pytest.mark.parametrize("failing_first", [True, False], ids=["failure-collected", "failure-pending"])
def test_cancelling_a_sync_publish_does_not_lose_a_handler_failure(caplog, failing_first):
    """A handler that already failed when the publish is cancelled is still reported."""
    bus = LocalEventBus(sync_mode=True)

    async def fails(event: Evt):
        await asyncio.sleep(0)
        raise Boom("failed before the cancel")

    async def waits(event: Evt):
        await asyncio.Event().wait()

    for handler in (fails, waits) if failing_first else (waits, fails):
        bus.register(handler)

    async def main():
        with caplog.at_level(logging.ERROR, logger="mediator"):
            publishing = asyncio.create_task(bus.publish(Evt(8)))
            await settle()
            publishing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await publishing
            await settle()

    run(main())
    gc.collect()
    reported = [r for r in caplog.records if r.name == "mediator" and r.exc_info]
    assert [type(r.exc_info[1]) for r in reported] == [Boom]
    assert "fails" in reported[0].getMessage()


CURRENT = contextvars.ContextVar("CURRENT", default="unset")


@MODES
def test_handlers_run_in_their_own_context(sync_mode):
    """As tasks would: a context variable set by a handler is not seen by the others or the publisher."""
    seen = []
    bus = LocalEventBus(sync_mode=sync_mode)

    def setter(name, suspend):
        async def handler(event: Evt):
            seen.append((name, CURRENT.get()))
            CURRENT.set(name)
            if suspend:
                await asyncio.sleep(0)
            assert CURRENT.get() == name

        return handler

    bus.register(setter("first", suspend=False))
    bus.register(setter("second", suspend=True))
    bus.register(setter("third", suspend=False))

    async def main():
        CURRENT.set("publisher")
        await bus.publish(Evt())
        await settle()
        return CURRENT.get()

    assert run(main()) == "publisher"
    assert seen == [("first", "publisher"), ("second", "publisher"), ("third", "publisher")]


# --- injection -------------------------------------------------------------------------


@MODES
def test_injection_is_filtered_per_handler(sync_mode):
    seen = []
    bus = LocalEventBus(sync_mode=sync_mode)

    @bus.register
    async def wants_a(event: Evt, a=None):
        seen.append(("wants_a", a))

    @bus.register
    async def wants_all(event: Evt, **kwargs):
        seen.append(("wants_all", kwargs))

    @bus.register
    async def wants_none(event: Evt):
        seen.append(("wants_none",))

    @bus.register(policies=[CallableHandlerPolicy(arg_map={"a": "renamed"})])
    async def wants_renamed(event: Evt, renamed=None, b=None):
        seen.append(("wants_renamed", renamed, b))

    async def main():
        await bus.publish(Evt(), a=1, b=2)
        await settle()

    run(main())
    assert seen == [("wants_a", 1), ("wants_all", {"a": 1, "b": 2}), ("wants_none",), ("wants_renamed", 1, 2)]


def test_injection_with_subject_by_name_on_events():
    seen = []
    bus = LocalEventBus(sync_mode=True, policies=[CallableHandlerPolicy(subject_arg="event")])

    @bus.register
    async def handler(a, event: Evt, b=None):
        seen.append((a, event.value, b))

    run(bus.publish(Evt(9), a="A", b="B", c="dropped"))
    assert seen == [("A", 9, "B")]


# --- EventPublisher / EventAggregate ----------------------------------------------------


class Context(EventPublish):
    """What a RecordingPublisher's transaction yields."""

    def __init__(self, log, fail_on):
        self.log = log
        self.fail_on = fail_on

    async def publish(self, obj, **kwargs):
        if obj in self.fail_on:
            self.fail_on.remove(obj)
            raise Boom(f"cannot publish {obj!r}")
        self.log.append(("publish", obj, kwargs))


class RecordingPublisher(EventPublisher):
    """A publisher whose transaction records enter/exit and yields a separate context."""

    def __init__(self, fail_on=()):
        self.log = []
        self.fail_on = list(fail_on)

    async def publish(self, obj, **kwargs):  # pragma: no cover - commits go through the context
        raise AssertionError("commit must publish through the transaction context")

    @asynccontextmanager
    async def transaction(self):
        self.log.append("enter")
        try:
            yield Context(self.log, self.fail_on)
        except BaseException as error:
            self.log.append(("abort", type(error).__name__))
            raise
        self.log.append("exit")


def _published(log):
    return [entry[1] for entry in log if entry[0] == "publish"]


def test_aggregate_commits_in_order_inside_one_transaction():
    publisher = RecordingPublisher()
    aggregate = EventAggregate()
    assert aggregate.use(publisher) is aggregate
    aggregate.enqueue(Evt(1))
    aggregate.enqueue(Other(2), a=1)
    aggregate.enqueue(Evt(3), b=2)
    run(aggregate.commit())
    assert publisher.log == [
        "enter",
        ("publish", Evt(1), {}),
        ("publish", Other(2), {"a": 1}),
        ("publish", Evt(3), {"b": 2}),
        "exit",
    ]


def test_aggregate_stage_is_empty_after_commit():
    publisher = RecordingPublisher()
    aggregate = EventAggregate().use(publisher)
    aggregate.enqueue(Evt(1))
    run(aggregate.commit())
    publisher.log.clear()
    run(aggregate.commit())
    assert _published(publisher.log) == []


def test_aggregate_cleanup_drops_staged_events():
    publisher = RecordingPublisher()
    aggregate = EventAggregate().use(publisher)
    aggregate.enqueue(Evt(1))
    aggregate.enqueue(Evt(2))
    aggregate.cleanup()
    aggregate.enqueue(Evt(3))
    run(aggregate.commit())
    assert _published(publisher.log) == [Evt(3)]


def test_aggregate_commit_without_publisher_is_a_config_error():
    aggregate = EventAggregate()
    aggregate.enqueue(Evt())
    with pytest.raises(ConfigEventAggregateError) as caught:
        run(aggregate.commit())
    assert isinstance(caught.value, AssertionError)
    assert isinstance(caught.value, EventAggregateError)
    assert "publisher" in str(caught.value)


def test_aggregate_keeps_the_failing_event_and_the_later_ones_staged():
    publisher = RecordingPublisher(fail_on=[Evt(2)])
    aggregate = EventAggregate().use(publisher)
    for value in (1, 2, 3):
        aggregate.enqueue(Evt(value), n=value)
    with pytest.raises(Boom):
        run(aggregate.commit())
    assert publisher.log == ["enter", ("publish", Evt(1), {"n": 1}), ("abort", "Boom")]
    publisher.log.clear()
    run(aggregate.commit())  # retry: only what was not delivered
    assert publisher.log == ["enter", ("publish", Evt(2), {"n": 2}), ("publish", Evt(3), {"n": 3}), "exit"]


def test_aggregate_with_a_sync_bus_drops_a_delivered_event_whose_handler_failed():
    """A handler failure is raised as a group; that event was delivered, the later ones wait."""
    log = []
    bus = LocalEventBus(sync_mode=True)

    @bus.register
    async def handler(event: Evt, n=None):
        log.append(n)
        if n == 1:
            raise Boom("handler failed")

    aggregate = EventAggregate().use(bus)
    aggregate.enqueue(Evt(), n=1)
    aggregate.enqueue(Evt(), n=2)
    with pytest.raises(ExceptionGroup):
        run(aggregate.commit())
    run(aggregate.commit())
    assert log == [1, 2]


def test_publisher_transaction_yields_the_publisher_itself():
    class Plain(EventPublisher):
        async def publish(self, obj, **kwargs):
            pass

    async def main():
        for publisher in (Plain(), LocalEventBus()):
            async with publisher.transaction() as context:
                assert context is publisher

    run(main())


# --- what a handler answers -------------------------------------------------------


class _CustomCoroutine(collections.abc.Coroutine):
    """A coroutine that is not a native one (what a plain function may return)."""

    def __init__(self, inner):
        self._inner = inner

    def send(self, value):
        return self._inner.send(value)

    def throw(self, *args):
        return self._inner.throw(*args)

    def close(self):
        self._inner.close()

    def __await__(self):
        return self._inner.__await__()


@pytest.mark.parametrize("strategy", ["concurrent", "sequential", "background"])
@pytest.mark.parametrize("suspend", [False, True], ids=["returns", "suspends"])
def test_every_kind_of_handler_answer_runs_to_completion(strategy, suspend):
    """Values returned, plain functions, and a plain function returning a non-native coroutine."""
    log = []
    bus = LocalEventBus(strategy=strategy)

    @bus.register
    async def returns_a_value(event: Evt):
        if suspend:
            await asyncio.sleep(0)
        log.append("value")
        return "ignored"

    @bus.register
    def plain(event: Evt):
        log.append("plain")
        return "ignored"

    async def custom_step():
        if suspend:
            await asyncio.sleep(0)
        log.append("custom")

    @bus.register
    def custom(event: Evt):
        return _CustomCoroutine(custom_step())

    @bus.register
    async def fails(event: Evt):
        if suspend:
            await asyncio.sleep(0)
        raise Boom("fails")

    errors = []
    bus._on_error = lambda error, event, handler: errors.append(error)

    async def main():
        try:
            await bus.publish(Evt())
        except ExceptionGroup as group:
            errors.extend(group.exceptions)
        await bus.drain()

    run(main())
    assert sorted(log) == ["custom", "plain", "value"]
    assert [type(error) for error in errors] == [Boom]
