"""The handler model beyond python-mediator 0.7, through the public API.

Sync (``def``) handlers, base-class dispatch (``polymorphic=True``), typed requests
(``mediator.Request``), streaming requests (``bus.stream``) and introspection
(``handlers_for``, ``registered``, ``check_handlers``), on both buses where it applies.
"""

import asyncio
import contextvars
import dataclasses
import functools
import gc
import typing
from dataclasses import dataclass
from typing import List, Optional

import pytest

import mediator
from mediator import Hook, MissingHandlersError, ModifierFactory, Request
from mediator.common.factory import (
    CallableHandlerPolicy,
    HandlerFactoryCascadeError,
    InspectionHandlerFactoryCascadeError,
    MethodHandlerPolicy,
)
from mediator.common.registry import HandlerStoreError, LookupHandlerStoreError
from mediator.common.types import ActionResult
from mediator.event import EventHandlerErrors, EventHandlerRegistry, LocalEventBus
from mediator.request import LocalRequestBus, RequestHandlerRegistry


# --- subjects ----------------------------------------------------------------------------


@dataclass
class Ping:
    value: int = 0


@dataclass
class Unhandled:
    value: int = 0


@dataclass
class Animal:
    name: str = ""


class Dog(Animal):
    pass


class Puppy(Dog):
    pass


class Left:
    pass


class Right:
    pass


class LeftRight(Left, Right):
    pass


class RightLeft(Right, Left):
    pass


class Boom(Exception):
    pass


# --- helpers -----------------------------------------------------------------------------


def run(coroutine):
    return asyncio.run(coroutine)


async def settle(turns=3):
    """Let the loop run a few turns (finalizers and background tasks make progress)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def request_bus(**kwargs):
    return LocalRequestBus(**kwargs)


def event_bus(**kwargs):
    return LocalEventBus(sync_mode=True, **kwargs)


BUSES = pytest.mark.parametrize("make_bus", [request_bus, event_bus], ids=["request", "event"])


def is_request_bus(bus):
    return isinstance(bus, LocalRequestBus)


async def deliver(bus, subject, **inject):
    """``execute`` on a request bus (its result), ``publish`` on an event bus (``None``)."""
    if is_request_bus(bus):
        return await bus.execute(subject, **inject)
    await bus.publish(subject, **inject)
    return None


def objs(handlers):
    """The registered objects behind handlers (as ``handlers_for``/``registered`` give them)."""
    return [handler.obj for handler in handlers]


def named(name, fn):
    """``fn`` renamed, so that error messages and introspection can be checked by name."""
    fn.__name__ = fn.__qualname__ = name
    return fn


def recorder(log, name, cls=Ping):
    """A sync handler of ``cls`` that appends ``name`` to ``log`` and returns it."""

    def handler(subject):
        log.append(name)
        return name

    handler.__annotations__ = {"subject": cls}
    return named(name, handler)


class Tag(ModifierFactory):
    """A ``ModifierFactory`` layer that logs around the call and tags the result."""

    def __init__(self, log, name):
        self.log = log
        self.name = name

    def create(self, call, **kwargs):
        async def layer(action):
            self.log.append(f"{self.name}>")
            result = await call(action)
            self.log.append(f"<{self.name}")
            return ActionResult((self.name, result.result))

        return layer


def logging_hook(log, name="hook", replace=None):
    """A ``mediator.Hook`` that logs its three stages (``after`` may replace the result)."""

    def after(subject, result):
        log.append(f"{name}.after")
        return result if replace is None else replace(result)

    return Hook(
        before=lambda subject, inject: log.append(f"{name}.before"),
        after=after,
        error=lambda subject, error: log.append(f"{name}.error:{type(error).__name__}"),
    )


# --- sync handlers: the forms a plain def can take ---------------------------------------


class SyncHandlers:
    def handle(self, query: Ping):
        return query.value * 2

    def __call__(self, query: Ping):
        return query.value * 2


def scaled(query: Ping, factor):
    return query.value * factor


def doubled(query: Ping):
    return query.value * 2


SYNC_FORMS = {
    "function": lambda: (doubled, None),
    "bound method": lambda: (SyncHandlers(), [MethodHandlerPolicy("handle")]),
    "callable object": lambda: (SyncHandlers(), None),
    "partial": lambda: (functools.partial(scaled, factor=2), None),
}


@pytest.mark.parametrize("form", list(SYNC_FORMS))
def test_sync_handler_forms_are_accepted_and_their_result_is_awaited(form):
    obj, policies = SYNC_FORMS[form]()
    bus = LocalRequestBus()
    bus.register(obj, policies=policies)
    assert objs(bus.handlers_for(Ping)) == [obj]
    assert run(bus.execute(Ping(21))) == 42


@pytest.mark.parametrize("inject", [{}, {"extra": 1}], ids=["direct", "injected"])
def test_a_sync_handler_raising_stop_iteration_fails_as_an_async_def_would(inject):
    """A StopIteration escaping a plain def handler comes out of ``await bus.execute`` as
    PEP 479 has a coroutine report it: ``RuntimeError('coroutine raised StopIteration')``
    caused by it (the compiled engine said 'generator'; found by the differential test)."""
    bus = LocalRequestBus()

    @bus.register
    def exhausted(ping: Ping, extra: int = 0) -> int:
        return next(iter(()))

    async def by_hand(ping: Ping) -> int:
        return next(iter(()))

    for call in (lambda: bus.execute(Ping(1), **inject), lambda: by_hand(Ping(1))):
        with pytest.raises(RuntimeError) as caught:
            run(call())
        assert str(caught.value) == "coroutine raised StopIteration"
        assert type(caught.value.__cause__) is StopIteration
        assert caught.value.__context__ is caught.value.__cause__


@pytest.mark.parametrize("form", list(SYNC_FORMS))
def test_sync_handler_forms_run_on_an_event_bus(form):
    """Each form wrapped as an event handler: publish runs it (sync handlers run inline)."""
    obj, policies = SYNC_FORMS[form]()
    results = []
    bus = LocalEventBus()
    bus.register(obj, policies=policies, modifiers=[Hook(after=lambda event, result: results.append(result))])

    async def main():
        await bus.publish(Ping(5))
        assert results == [10]  # already ran: publish made no task for it
        assert bus.pending == 0

    run(main())


@BUSES
def test_sync_handler_gets_injection_through_arg_map(make_bus):
    seen = []
    bus = make_bus(policies=[CallableHandlerPolicy(arg_map={"database": "db"})])

    @bus.register
    def handler(query: Ping, db=None, *, user=None):
        seen.append((query.value, db, user))
        return query.value

    result = run(deliver(bus, Ping(1), database="D", user="U", unknown="dropped"))
    assert seen == [(1, "D", "U")]
    assert result == (1 if is_request_bus(bus) else None)


@BUSES
def test_sync_handler_subject_arg_passes_the_subject_by_name(make_bus):
    seen = []
    bus = make_bus(policies=[CallableHandlerPolicy(subject_arg="query")])

    @bus.register
    def handler(db, query: Ping):
        seen.append((db, query))

    run(deliver(bus, Ping(3), db="D", query="not injected"))
    assert seen == [("D", Ping(3))]


def test_sync_request_handler_error_surfaces_when_awaited():
    bus = LocalRequestBus()

    @bus.register
    def handler(query: Ping):
        raise Boom(f"bad {query.value}")

    async def main():
        awaitable = bus.execute(Ping(7))  # calling execute does not raise
        with pytest.raises(Boom, match="bad 7"):
            await awaitable

    run(main())


def test_sync_request_handler_runs_under_create_task_and_gather():
    bus = LocalRequestBus()
    bus.register(doubled)

    @bus.register
    def failing(query: Unhandled):
        raise Boom("failed")

    async def main():
        assert await asyncio.create_task(bus.execute(Ping(4))) == 8
        with pytest.raises(Boom):
            await asyncio.create_task(bus.execute(Unhandled()))
        results = await asyncio.gather(bus.execute(Ping(1)), bus.execute(Unhandled()), return_exceptions=True)
        assert results[0] == 2 and isinstance(results[1], Boom)

    run(main())


def test_sync_handler_returning_a_future_runs_under_create_task():
    """A def handing work to an executor returns a Future: execute() must still suit create_task."""
    bus = LocalRequestBus()

    @bus.register
    def offload(query: Ping):
        return asyncio.get_running_loop().run_in_executor(None, lambda: query.value * 2)

    async def main():
        assert await bus.execute(Ping(2)) == 4  # awaiting it directly works
        return await asyncio.create_task(bus.execute(Ping(3)))

    assert run(main()) == 6


def forwarding(fn):
    """A sync decorator of an async function, as a library would write it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@BUSES
def test_def_returning_an_awaitable_has_it_awaited(make_bus):
    seen = []
    bus = make_bus()

    @bus.register
    @forwarding
    async def decorated(query: Ping, factor=1):
        await asyncio.sleep(0)
        seen.append(("decorated", query.value * factor))
        return query.value * factor

    async def finish(query):
        await asyncio.sleep(0)
        seen.append(("coroutine", query.value))
        return -query.value

    @bus.register
    def returns_coroutine(query: Unhandled):
        return finish(query)

    async def main():
        first = await deliver(bus, Ping(2), factor=5)  # injection follows the wrapped signature
        second = await deliver(bus, Unhandled(3))
        return first, second

    results = run(main())
    assert seen == [("decorated", 10), ("coroutine", 3)]
    assert results == ((10, -3) if is_request_bus(bus) else (None, None))


def test_hooks_wrap_a_sync_request_handler():
    log = []
    bus = LocalRequestBus()

    @bus.register(modifiers=[logging_hook(log, replace=lambda result: result + 1)])
    def handler(query: Ping):
        log.append("handler")
        if query.value < 0:
            raise Boom("negative")
        return query.value

    assert run(bus.execute(Ping(1))) == 2
    assert log == ["hook.before", "handler", "hook.after"]
    log.clear()
    with pytest.raises(Boom):
        run(bus.execute(Ping(-1)))
    assert log == ["hook.before", "handler", "hook.error:Boom"]


@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync_mode", "background"])
def test_hooks_wrap_a_sync_event_handler(sync_mode):
    log = []
    bus = LocalEventBus(sync_mode=sync_mode, on_error=lambda error, event, handler: log.append("on_error"))

    @bus.register(modifiers=[logging_hook(log)])
    def handler(event: Ping):
        log.append("handler")
        if event.value < 0:
            raise Boom("negative")

    async def main():
        await bus.publish(Ping(1))
        assert log == ["hook.before", "handler", "hook.after"]
        log.clear()
        if sync_mode:
            with pytest.raises(EventHandlerErrors):
                await bus.publish(Ping(-1))
            assert log == ["hook.before", "handler", "hook.error:Boom"]
        else:
            await bus.publish(Ping(-1))
            assert log == ["hook.before", "handler", "hook.error:Boom", "on_error"]

    run(main())


def test_modifier_factories_wrap_a_sync_request_handler():
    """Bus modifiers outermost, then register(modifiers=); a Hook between them keeps its place."""
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, "bus")])

    @bus.register(modifiers=[logging_hook(log), Tag(log, "own")])
    def handler(query: Ping):
        log.append("handler")
        return query.value

    assert run(bus.execute(Ping(9))) == ("bus", ("own", 9))
    assert log == ["bus>", "hook.before", "own>", "handler", "<own", "hook.after", "<bus"]


def test_modifier_factories_wrap_a_sync_event_handler():
    log = []
    bus = LocalEventBus(modifiers=[Tag(log, "bus")])

    @bus.register(modifiers=[Tag(log, "own")])
    def handler(event: Ping):
        log.append(f"handler {event.value}")

    async def main():
        await bus.publish(Ping(1))
        await bus.drain()

    run(main())
    assert log == ["bus>", "own>", "handler 1", "<own", "<bus"]


def test_sync_event_handlers_run_inline_in_background_mode():
    """publish has run the sync handlers when it returns; only the async ones are pending."""
    log = []
    bus = LocalEventBus()

    @bus.register
    async def later(event: Ping):
        log.append("async")

    bus.register(recorder(log, "sync"))

    async def main():
        await bus.publish(Ping())
        assert log == ["sync"]
        assert bus.pending == 1
        await bus.drain()
        assert log == ["sync", "async"]
        assert bus.pending == 0

    run(main())


def test_sync_event_handler_behind_a_modifier_factory_still_runs_inline():
    log = []
    bus = LocalEventBus()
    bus.register(recorder(log, "sync"), modifiers=[Tag(log, "layer")])

    async def main():
        await bus.publish(Ping())
        assert (log, bus.pending) == (["layer>", "sync", "<layer"], 0)

    run(main())


def test_inline_sync_event_handler_runs_in_its_own_context_copy():
    var = contextvars.ContextVar("var", default="publisher")
    seen = []
    bus = LocalEventBus()

    @bus.register
    def first(event: Ping):
        seen.append(var.get())
        var.set("first")

    @bus.register
    def second(event: Ping):
        seen.append(var.get())

    async def main():
        await bus.publish(Ping())
        return var.get()

    assert run(main()) == "publisher"
    assert seen == ["publisher", "publisher"]


def test_sync_event_handler_failure_reaches_on_error_before_publish_returns():
    failures = []
    log = []
    bus = LocalEventBus(on_error=lambda error, event, handler: failures.append((error, event, handler.obj)))

    @bus.register
    def broken(event: Ping):
        raise Boom("broken")

    bus.register(recorder(log, "after the broken one"))

    async def main():
        await bus.publish(Ping(4))
        assert bus.pending == 0
        assert [(str(error), event, obj) for error, event, obj in failures] == [("broken", Ping(4), broken)]
        assert log == ["after the broken one"]  # a failure does not stop the others

    run(main())


def test_sync_event_handler_failures_come_back_in_the_group_in_sync_mode():
    log = []
    bus = LocalEventBus(sync_mode=True)

    def failing(name):
        def handler(event: Ping):
            raise Boom(name)

        return named(name, handler)

    first, second = failing("first_broken"), failing("second_broken")
    bus.register(first)
    bus.register(recorder(log, "fine"))
    bus.register(second)

    async def main():
        with pytest.raises(EventHandlerErrors) as info:
            await bus.publish(Ping(2))
        return info.value

    group = run(main())
    assert log == ["fine"]
    assert [str(error) for error in group.exceptions] == ["first_broken", "second_broken"]
    assert objs(group.handlers) == [first, second]
    assert group.event == Ping(2)
    for error, name in zip(group.exceptions, ["first_broken", "second_broken"]):
        assert any(name in note and "Ping(value=2)" in note for note in error.__notes__)


def missing_annotation(query):
    return query


def generic_annotation(query: List[int]):
    return query


def optional_annotation(query: Optional[Ping]):
    return query


async def unannotated_stream(query):
    yield query


@BUSES
@pytest.mark.parametrize(
    "handler",
    [missing_annotation, generic_annotation, optional_annotation, unannotated_stream],
    ids=lambda handler: handler.__name__,
)
def test_sync_and_stream_handlers_still_need_a_class_annotation(make_bus, handler):
    bus = make_bus()
    with pytest.raises(InspectionHandlerFactoryCascadeError) as info:
        bus.register(handler)
    assert handler.__name__ in str(info.value)
    assert "query" in str(info.value)
    assert bus.registered() == {}


@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync_mode", "background"])
def test_async_generator_event_handler_is_not_silently_ignored(sync_mode):
    """It must either be refused at registration (naming it) or have its body run on publish."""
    log = []
    bus = LocalEventBus(sync_mode=sync_mode)

    async def streaming_listener(event: Ping):
        log.append("ran")
        yield

    try:
        bus.register(streaming_listener)
    except (TypeError, HandlerStoreError, HandlerFactoryCascadeError) as error:
        assert "streaming_listener" in str(error)
        return

    async def main():
        await bus.publish(Ping())
        await bus.drain()

    run(main())
    assert log == ["ran"]


# --- base-class dispatch -----------------------------------------------------------------


def test_polymorphic_request_goes_to_the_nearest_class_in_the_mro():
    bus = LocalRequestBus(polymorphic=True)

    @bus.register
    async def on_animal(request: Animal):
        return "animal"

    @bus.register
    async def on_dog(request: Dog):
        return "dog"

    async def main():
        return [await bus.execute(cls()) for cls in (Animal, Dog, Puppy)]

    assert run(main()) == ["animal", "dog", "dog"]


def test_polymorphic_request_with_multiple_inheritance_follows_mro_order():
    """Right is registered first, yet LeftRight goes to Left: the MRO decides, not registration."""
    bus = LocalRequestBus(polymorphic=True)
    bus.register(recorder([], "right", Right))
    bus.register(recorder([], "left", Left))

    async def main():
        return await bus.execute(LeftRight()), await bus.execute(RightLeft())

    assert run(main()) == ("left", "right")


def test_exact_request_bus_does_not_dispatch_a_subclass():
    bus = LocalRequestBus()
    bus.register(recorder([], "animal", Animal))

    with pytest.raises(LookupHandlerStoreError, match="Dog"):
        run(bus.execute(Dog()))
    assert bus.handlers_for(Dog) == ()


def test_polymorphic_request_without_any_handler_in_the_mro_raises_lookup_error():
    bus = LocalRequestBus(polymorphic=True)
    bus.register(recorder([], "animal", Animal))

    with pytest.raises(LookupHandlerStoreError, match="Ping"):
        run(bus.execute(Ping()))


@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync_mode", "background"])
def test_polymorphic_event_reaches_every_class_in_the_mro_most_specific_first(sync_mode):
    log = []
    bus = LocalEventBus(sync_mode=sync_mode, polymorphic=True)
    for name, cls in [("animal 1", Animal), ("dog", Dog), ("animal 2", Animal), ("puppy", Puppy), ("dog 2", Dog)]:
        bus.register(recorder(log, name, cls))

    async def main():
        for event in (Puppy(), Dog(), Animal()):
            await bus.publish(event)
            log.append("|")
        await bus.drain()

    run(main())
    assert log == [
        "puppy", "dog", "dog 2", "animal 1", "animal 2", "|",
        "dog", "dog 2", "animal 1", "animal 2", "|",
        "animal 1", "animal 2", "|",
    ]


def test_polymorphic_event_with_multiple_inheritance_follows_mro_order():
    log = []
    bus = LocalEventBus(sync_mode=True, polymorphic=True)
    bus.register(recorder(log, "right", Right))
    bus.register(recorder(log, "left", Left))

    async def main():
        await bus.publish(LeftRight())
        await bus.publish(RightLeft())

    run(main())
    assert log == ["left", "right", "right", "left"]


def test_polymorphic_event_runs_a_handler_registered_for_two_classes_once():
    """One function registered for Animal and for Dog runs once per event, as its Dog handler."""
    seen = []
    bus = LocalEventBus(sync_mode=True, polymorphic=True)

    def record(animal: Animal = None, dog: Dog = None):
        as_dog = dog is not None
        seen.append(("dog" if as_dog else "animal", type(dog if as_dog else animal).__name__))

    bus.register(record, policies=[CallableHandlerPolicy(subject_arg="animal")])
    bus.register(record, policies=[CallableHandlerPolicy(subject_arg="dog")])

    async def main():
        await bus.publish(Puppy())
        await bus.publish(Animal())

    run(main())
    assert seen == [("dog", "Puppy"), ("animal", "Animal")]
    assert len(bus.handlers_for(Puppy)) == 1


def test_object_handler_sees_every_event():
    seen = []
    bus = LocalEventBus(sync_mode=True, polymorphic=True)

    @bus.register
    def audit(event: object):
        seen.append(event)

    events = [1, "text", Ping(1), Puppy("rex"), None, True]

    async def main():
        for event in events:
            await bus.publish(event)

    run(main())
    assert seen == events


def test_registering_after_dispatch_invalidates_the_request_cache():
    bus = LocalRequestBus(polymorphic=True)
    bus.register(recorder([], "animal", Animal))

    async def main():
        before = await bus.execute(Dog()), await bus.execute(Puppy())
        bus.register(recorder([], "dog", Dog))
        after = await bus.execute(Dog()), await bus.execute(Puppy()), await bus.execute(Animal())
        return before, after

    assert run(main()) == (("animal", "animal"), ("dog", "dog", "animal"))
    assert [handler.obj.__name__ for handler in bus.handlers_for(Puppy)] == ["dog"]


def test_registering_after_dispatch_invalidates_the_event_cache():
    log = []
    bus = LocalEventBus(sync_mode=True, polymorphic=True)
    bus.register(recorder(log, "dog", Dog))

    async def main():
        await bus.publish(Puppy())
        bus.register(recorder(log, "animal", Animal))
        await bus.publish(Puppy())
        bus.register(recorder(log, "puppy", Puppy))
        await bus.publish(Puppy())

    run(main())
    assert log == ["dog", "dog", "animal", "puppy", "dog", "animal"]


@pytest.mark.parametrize("kind", ["request", "event"])
def test_including_a_registry_invalidates_the_cache(kind):
    log = []
    bus, registry = (
        (LocalRequestBus(polymorphic=True), RequestHandlerRegistry())
        if kind == "request"
        else (LocalEventBus(sync_mode=True, polymorphic=True), EventHandlerRegistry())
    )
    bus.register(recorder(log, "animal", Animal))
    registry.register(recorder(log, "dog", Dog))

    async def main():
        await deliver(bus, Puppy())
        bus.include(registry)
        await deliver(bus, Puppy())

    run(main())
    assert log == (["animal", "dog"] if kind == "request" else ["animal", "dog", "animal"])


def test_polymorphic_request_keeps_hooks_modifiers_and_injection_of_the_base_handler():
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, "bus")], polymorphic=True)

    @bus.register(modifiers=[logging_hook(log)])
    def on_animal(request: Animal, owner=None):
        log.append(f"handler {type(request).__name__} of {owner}")
        return request.name

    assert run(bus.execute(Puppy("rex"), owner="ann", unused=1)) == ("bus", "rex")
    assert log == ["bus>", "hook.before", "handler Puppy of ann", "hook.after", "<bus"]


@pytest.mark.parametrize("strategy", ["background", "concurrent", "sequential"])
def test_polymorphic_event_keeps_hooks_modifiers_and_injection(strategy):
    log = []
    bus = LocalEventBus(modifiers=[Tag(log, "bus")], strategy=strategy, polymorphic=True)

    @bus.register(modifiers=[logging_hook(log, "sync")])
    def on_animal(event: Animal, owner=None):
        log.append(f"sync {type(event).__name__} of {owner}")

    @bus.register(modifiers=[logging_hook(log, "async")])
    async def on_dog(event: Dog, owner=None):
        await asyncio.sleep(0)
        log.append(f"async {type(event).__name__} of {owner}")

    async def main():
        await bus.publish(Puppy(), owner="ann")
        await bus.drain()

    run(main())
    for handler in ("sync", "async"):
        run_of = [entry for entry in log if entry.startswith(handler)]
        assert run_of == [f"{handler}.before", f"{handler} Puppy of ann", f"{handler}.after"]
    assert log.count("bus>") == log.count("<bus") == 2
    if strategy != "background":  # in the background the sync handler runs inline, at publish
        assert log.index("async.before") < log.index("sync.before")  # Dog's handler first


# --- typed results -----------------------------------------------------------------------


@dataclass
class GetName(Request[str]):
    user_id: int


@dataclass(frozen=True)
class GetAge(Request[int]):
    user_id: int


class Slotted(Request[int]):
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def test_request_subclass_is_a_plain_request_at_run_time():
    bus = LocalRequestBus()

    @bus.register
    async def get_name(query: GetName) -> str:
        return f"user {query.user_id}"

    @bus.register
    def get_age(query: GetAge) -> int:
        return query.user_id * 10

    @bus.register
    def slotted(query: Slotted) -> int:
        return query.value

    async def main():
        return await bus.execute(GetName(1)), await bus.execute(GetAge(4)), await bus.execute(Slotted(5))

    assert run(main()) == ("user 1", 40, 5)


def test_request_adds_no_attributes_to_dataclasses():
    assert GetName(1) == GetName(1) != GetName(2)
    assert [field.name for field in dataclasses.fields(GetName)] == ["user_id"]
    assert vars(GetName(3)) == {"user_id": 3}
    assert dataclasses.asdict(GetAge(2)) == {"user_id": 2}
    assert hash(GetAge(2)) == hash(GetAge(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        GetAge(2).user_id = 3  # type: ignore[misc]
    assert not hasattr(Slotted(1), "__dict__")  # Request keeps __slots__ classes slotted
    assert isinstance(GetName(1), Request)


def test_request_subscription_works_at_run_time():
    assert typing.get_origin(Request[int]) is Request
    assert typing.get_args(Request[int]) == (int,)
    assert GetName.__orig_bases__ == (Request[str],)
    assert mediator.Request is Request


def test_polymorphic_bus_can_serve_every_request_subclass():
    bus = LocalRequestBus(polymorphic=True)

    @bus.register
    def any_request(query: Request):
        return type(query).__name__

    @bus.register
    def get_age(query: GetAge):
        return 7

    async def main():
        return await bus.execute(GetName(1)), await bus.execute(GetAge(1)), await bus.execute(Slotted(1))

    assert run(main()) == ("GetName", 7, "Slotted")


# --- streaming ---------------------------------------------------------------------------


@dataclass
class Count(Request[int]):
    n: int


class SubCount(Count):
    pass


def counting_bus(log, modifiers=(), **kwargs):
    """A request bus whose Count handler (with ``modifiers``) yields 0..n-1 times ``step``.

    The handler logs "opened" when its body starts and "closed" when its generator closes.
    """
    bus = LocalRequestBus(**kwargs)

    async def count(query: Count, step=1):
        log.append("opened")
        try:
            for index in range(query.n):
                yield index * step
        finally:
            log.append("closed")

    bus.register(count, modifiers=modifiers)
    return bus


async def collect(stream):
    return [item async for item in stream]


class Streams:
    async def count(self, query: Count, step=1):
        for index in range(query.n):
            yield index * step

    async def __call__(self, query: Count, step=1):
        for index in range(query.n):
            yield index * step


async def count_by(query: Count, step):
    for index in range(query.n):
        yield index * step


STREAM_FORMS = {
    "bound method": lambda: (Streams(), [MethodHandlerPolicy("count")]),
    "callable object": lambda: (Streams(), None),
    "partial": lambda: (functools.partial(count_by, step=1), None),
    "partial of a bound method": lambda: (functools.partial(Streams().count, step=1), None),
}

def test_stream_yields_in_order_with_injection():
    log = []
    bus = counting_bus(log)
    assert run(collect(bus.stream(Count(4), step=10, unused="x"))) == [0, 10, 20, 30]
    assert log == ["opened", "closed"]


@pytest.mark.parametrize("form", list(STREAM_FORMS))
def test_stream_handler_forms(form):
    obj, policies = STREAM_FORMS[form]()
    bus = LocalRequestBus()
    bus.register(obj, policies=policies)
    assert run(collect(bus.stream(Count(3)))) == [0, 1, 2]


def test_stream_hook_runs_when_the_stream_opens():
    """before runs at the first iteration, not at stream(); after sees the async iterator."""
    log = []

    class Opening(Hook):
        def before(self, subject, inject):
            log.append("before")
            inject["step"] = 100

        def after(self, subject, result):
            log.append(("after", hasattr(result, "__anext__")))
            return result

    bus = counting_bus(log, modifiers=[Opening()])

    async def main():
        stream = bus.stream(Count(2))
        assert log == []
        first = await stream.__anext__()
        assert log == ["before", ("after", True), "opened"]
        return [first] + await collect(stream)

    assert run(main()) == [0, 100]
    assert log[-1] == "closed"


class StepOf(ModifierFactory):
    """A layer that logs the opening and sets the injected ``step``."""

    def __init__(self, log, step):
        self.log = log
        self.step = step

    def create(self, call, **kwargs):
        async def layer(action):
            self.log.append(("layer", action.subject))
            action.inject["step"] = self.step
            return await call(action)

        return layer


def test_stream_modifier_factories_wrap_the_opening():
    log = []
    bus = counting_bus(log, modifiers=[StepOf(log, 3)])

    async def main():
        stream = bus.stream(Count(3), step=1)
        assert log == []
        return await collect(stream)

    assert run(main()) == [0, 3, 6]
    assert log == [("layer", Count(3)), "opened", "closed"]


def test_stream_bus_modifiers_and_registration_hooks_combine():
    log = []
    bus = LocalRequestBus(modifiers=[StepOf(log, 2)])

    @bus.register(modifiers=[logging_hook(log)])
    async def count(query: Count, step=1):
        for index in range(query.n):
            yield index * step

    assert run(collect(bus.stream(Count(3)))) == [0, 2, 4]
    assert log == [("layer", Count(3)), "hook.before", "hook.after"]


def test_stream_error_reaches_the_consumer_after_the_items_before_it():
    bus = LocalRequestBus()

    @bus.register
    async def flaky(query: Count):
        yield 1
        yield 2
        raise Boom("mid-stream")

    async def main():
        items = []
        with pytest.raises(Boom, match="mid-stream"):
            async for item in bus.stream(Count(0)):
                items.append(item)
        return items

    assert run(main()) == [1, 2]


def test_leaving_an_async_for_early_lets_the_generator_close():
    log = []
    bus = counting_bus(log)

    async def main():
        async for item in bus.stream(Count(10)):
            if item == 1:
                break
        gc.collect()  # PyPy: the dropped stream is only finalized by a collection
        await settle()
        return list(log)

    assert run(main()) == ["opened", "closed"]


def test_async_with_closes_the_stream_at_once():
    log = []
    bus = counting_bus(log)

    async def main():
        async with bus.stream(Count(10)) as items:
            assert await items.__anext__() == 0
            assert log == ["opened"]
        assert log == ["opened", "closed"]
        with pytest.raises(StopAsyncIteration):
            await items.__anext__()

    run(main())


def test_aclose_closes_the_stream_at_once():
    log = []
    bus = counting_bus(log)

    async def main():
        stream = bus.stream(Count(10))
        assert await stream.__anext__() == 0
        await stream.aclose()
        assert log == ["opened", "closed"]
        assert await collect(stream) == []

    run(main())


def test_aclose_before_the_first_iteration_never_opens_the_handler():
    log = []
    bus = counting_bus(log, modifiers=[logging_hook(log)])

    async def main():
        stream = bus.stream(Count(3))
        await stream.aclose()
        assert await collect(stream) == []

    run(main())
    assert log == []


@pytest.mark.parametrize("polymorphic", [False, True], ids=["exact", "polymorphic"])
def test_stream_without_handler_raises_lookup_error_on_first_iteration(polymorphic):
    bus = counting_bus([], polymorphic=polymorphic)

    async def main():
        stream = bus.stream(Unhandled(1))  # no error yet
        with pytest.raises(LookupHandlerStoreError, match="Unhandled"):
            await stream.__anext__()

    run(main())


async def plain_count(query: Count):
    return query.n


def sync_count(query: Count):
    return query.n


def test_stream_of_an_async_handler_raises_type_error_naming_it():
    log = []
    bus = LocalRequestBus()
    bus.register(plain_count, modifiers=[logging_hook(log)])

    async def main():
        stream = bus.stream(Count(1))
        with pytest.raises(TypeError, match="plain_count") as info:
            await stream.__anext__()
        return str(info.value)

    message = run(main())
    assert "execute" in message
    assert log == []  # the handler was not started


def test_stream_of_a_sync_handler_that_returns_no_async_iterator_raises_type_error_naming_it():
    """A plain def may return an async iterator (a decorated stream handler): it runs to tell."""
    bus = LocalRequestBus()
    bus.register(sync_count)

    async def main():
        with pytest.raises(TypeError, match="sync_count") as info:
            await bus.stream(Count(1)).__anext__()
        return str(info.value)

    assert "execute" in run(main())


def test_a_decorated_stream_handler_can_be_streamed():
    def as_plain_def(generator_function):
        @functools.wraps(generator_function)
        def wrapper(query):
            return generator_function(query)

        wrapper.__wrapped__ = None  # an opaque decorator: inspection sees the plain def only
        del wrapper.__wrapped__
        return wrapper

    @as_plain_def
    async def counting(query: Count):
        for i in range(query.n):
            yield i

    bus = LocalRequestBus()
    bus.register(counting)

    async def main():
        return [i async for i in bus.stream(Count(3))]

    assert run(main()) == [0, 1, 2]


@pytest.mark.parametrize("layer", ["none", "hook", "factory"])
def test_execute_of_a_stream_request_raises_type_error_pointing_to_stream(layer):
    log = []
    modifiers = {"none": [], "hook": [logging_hook(log)], "factory": [StepOf(log, 1)]}[layer]
    bus = counting_bus(log, modifiers=modifiers)

    async def main():
        awaitable = bus.execute(Count(2))  # no error yet
        with pytest.raises(TypeError) as info:
            await awaitable
        return str(info.value)

    message = run(main())
    assert "counting_bus.<locals>.count " in message and "bus.stream(" in message
    assert log == []  # neither the handler nor its modifiers ran


def test_polymorphic_stream_goes_to_the_base_class_handler():
    log = []
    bus = counting_bus(log, polymorphic=True)
    assert run(collect(bus.stream(SubCount(3), step=2))) == [0, 2, 4]

    @bus.register
    async def sub_count(query: SubCount):
        yield "own"

    assert run(collect(bus.stream(SubCount(3)))) == ["own"]
    assert run(collect(bus.stream(Count(1)))) == [0]


# --- introspection -----------------------------------------------------------------------


def both_kinds(polymorphic=False):
    """A request bus and an event bus, each with handlers for Animal and Dog."""
    requests = LocalRequestBus(polymorphic=polymorphic)
    events = LocalEventBus(polymorphic=polymorphic)
    handlers = {
        "on_animal": recorder([], "on_animal", Animal),
        "on_dog": recorder([], "on_dog", Dog),
        "on_animal_2": recorder([], "on_animal_2", Animal),
    }
    requests.register(handlers["on_animal"])
    requests.register(handlers["on_dog"])
    for handler in handlers.values():
        events.register(handler)
    return requests, events, handlers


def test_handlers_for_exact_class():
    requests, events, h = both_kinds()
    assert objs(requests.handlers_for(Animal)) == [h["on_animal"]]
    assert objs(events.handlers_for(Animal)) == [h["on_animal"], h["on_animal_2"]]
    assert objs(events.handlers_for(Dog)) == [h["on_dog"]]
    for bus in (requests, events):
        assert bus.handlers_for(Puppy) == ()
        assert bus.handlers_for(Ping) == ()


def test_handlers_for_polymorphic_follows_dispatch():
    requests, events, h = both_kinds(polymorphic=True)
    assert objs(requests.handlers_for(Puppy)) == [h["on_dog"]]
    assert objs(events.handlers_for(Puppy)) == [h["on_dog"], h["on_animal"], h["on_animal_2"]]
    assert objs(events.handlers_for(Animal)) == [h["on_animal"], h["on_animal_2"]]
    for bus in (requests, events):
        assert bus.handlers_for(Ping) == ()


@BUSES
@pytest.mark.parametrize("not_a_class", [Ping(1), "Ping", None, List[int]], ids=repr)
def test_handlers_for_rejects_a_non_class(make_bus, not_a_class):
    bus = make_bus()
    with pytest.raises(TypeError) as info:
        bus.handlers_for(not_a_class)
    assert repr(not_a_class) in str(info.value)


@pytest.mark.parametrize("polymorphic", [False, True], ids=["exact", "polymorphic"])
def test_registered_lists_classes_and_handlers_in_registration_order(polymorphic):
    requests, events, h = both_kinds(polymorphic)

    async def main():  # dispatching subclasses adds nothing to registered()
        await requests.execute(Dog())
        await events.publish(Dog())
        if polymorphic:
            await requests.execute(Puppy())
            await events.publish(Puppy())
        await events.drain()

    run(main())
    assert {cls: objs(handlers) for cls, handlers in requests.registered().items()} == {
        Animal: [h["on_animal"]],
        Dog: [h["on_dog"]],
    }
    assert list(requests.registered()) == [Animal, Dog]
    assert {cls: objs(handlers) for cls, handlers in events.registered().items()} == {
        Animal: [h["on_animal"], h["on_animal_2"]],
        Dog: [h["on_dog"]],
    }
    assert list(events.registered()) == [Animal, Dog]


@BUSES
def test_registered_is_empty_on_a_new_bus(make_bus):
    assert make_bus().registered() == {}


@BUSES
def test_check_handlers_passes_silently_when_all_are_handled(make_bus):
    bus = make_bus()
    bus.register(recorder([], "ping", Ping))
    bus.register(recorder([], "animal", Animal))
    assert bus.check_handlers([Ping, Animal]) is None
    assert bus.check_handlers([]) is None


@BUSES
def test_check_handlers_lists_every_missing_class(make_bus):
    bus = make_bus()
    bus.register(recorder([], "ping", Ping))
    with pytest.raises(MissingHandlersError) as info:
        bus.check_handlers([Unhandled, Ping, Dog, Count])
    error = info.value
    assert isinstance(error, LookupHandlerStoreError)
    assert error.classes == [Unhandled, Dog, Count]
    for cls in (Unhandled, Dog, Count):
        assert cls.__qualname__ in str(error)
    assert "Ping" not in str(error)


@BUSES
def test_check_handlers_follows_polymorphic_dispatch(make_bus):
    exact, polymorphic = make_bus(), make_bus(polymorphic=True)
    for bus in (exact, polymorphic):
        bus.register(recorder([], "animal", Animal))
    polymorphic.check_handlers([Animal, Dog, Puppy])
    with pytest.raises(MissingHandlersError) as info:
        exact.check_handlers([Animal, Dog, Puppy])
    assert info.value.classes == [Dog, Puppy]


def test_missing_handlers_error_is_exported():
    assert mediator.MissingHandlersError is MissingHandlersError
    assert issubclass(MissingHandlersError, LookupError)
