"""Behaviour of LocalRequestBus: dispatch, errors, argument injection, concurrency."""

import asyncio
import functools
from dataclasses import dataclass

import pytest

from mediator.common.factory import CallableHandlerPolicy
from mediator.common.registry import CollisionHandlerStoreError, LookupHandlerStoreError
from mediator.request import LocalRequestBus


@dataclass
class Ping:
    value: int = 0


@dataclass
class Pong:
    value: int = 0


class Unhandled:
    pass


def run(coroutine):
    return asyncio.run(coroutine)


def test_execute_returns_the_handler_value():
    bus = LocalRequestBus()

    @bus.register
    async def handle(request: Ping):
        return ("pinged", request.value)

    assert run(bus.execute(Ping(7))) == ("pinged", 7)


def test_each_request_class_goes_to_its_own_handler():
    bus = LocalRequestBus()

    @bus.register
    async def ping(request: Ping):
        return "ping"

    @bus.register
    async def pong(request: Pong):
        return "pong"

    async def main():
        return await bus.execute(Pong()), await bus.execute(Ping())

    assert run(main()) == ("pong", "ping")


@pytest.mark.parametrize("polymorphic", [False, True])
def test_hundreds_of_request_classes_each_reach_their_own_handler(polymorphic):
    """Registrations between dispatches, past every growth of the lookup table."""
    bus = LocalRequestBus(polymorphic=polymorphic)
    classes = []

    async def main():
        for number in range(300):
            cls = type(f"Request{number}", (), {})
            classes.append(cls)

            async def handle(request: cls, number=number):  # type: ignore[valid-type]
                return number

            bus.register(handle)
            assert await bus.execute(cls()) == number
            assert await bus.execute(classes[number // 2]()) == number // 2
        assert [await bus.execute(cls()) for cls in classes] == list(range(300))
        with pytest.raises(LookupHandlerStoreError):
            await bus.execute(Unhandled())

    run(main())


def test_request_classes_whose_metaclass_redefines_equality_match_as_a_dict_would():
    """Lookup is by the class, with the class's own ``==`` and ``hash``, on every engine."""

    class ByName(type):
        def __eq__(cls, other):
            return isinstance(other, ByName) and cls.__name__ == other.__name__

        def __hash__(cls):
            return hash(cls.__name__)

    First = ByName("Same", (), {})
    Second = ByName("Same", (), {})
    bus = LocalRequestBus()

    async def handle(request: First):  # type: ignore[valid-type]
        return type(request)

    bus.register(handle)
    assert run(bus.execute(First())) is First
    assert run(bus.execute(Second())) is Second


def test_missing_handler_raises_only_when_awaited():
    """execute() itself never raises: the awaitable it returns does."""
    bus = LocalRequestBus()

    async def main():
        awaitable = bus.execute(Unhandled())  # must not raise here
        awaitable.close()  # not awaited: close it so no "never awaited" warning
        with pytest.raises(LookupHandlerStoreError) as caught:
            await bus.execute(Unhandled())
        return caught.value

    error = run(main())
    assert isinstance(error, LookupError)
    assert "Unhandled" in str(error)


def test_duplicate_handler_is_a_collision_naming_the_class():
    bus = LocalRequestBus()

    @bus.register
    async def first(request: Ping):
        return 1

    async def second(request: Ping):
        return 2

    with pytest.raises(CollisionHandlerStoreError) as caught:
        bus.register(second)
    assert isinstance(caught.value, KeyError)
    assert "Ping" in str(caught.value)
    # the first handler is still the one in charge
    assert run(bus.execute(Ping())) == 1


# --- injection ---------------------------------------------------------------

INJECT = {"a": 1, "b": 2, "c": 3}


async def takes_a(request: Ping, a=None):
    return {"a": a}


async def takes_a_b(request: Ping, a=None, b=None):
    return {"a": a, "b": b}


async def takes_x_b(request: Ping, x=None, b=None):
    return {"x": x, "b": b}


async def takes_kwargs(request: Ping, **kwargs):
    return kwargs


async def takes_nothing(request: Ping):
    return {}


async def keyword_only_subject(*, request: Ping, a=None):
    return {"request": request.value, "a": a}


async def subject_last(a=None, request: Ping = None, c=None):
    return {"request": request.value, "a": a, "c": c}


@pytest.mark.parametrize(
    "handler, policy, expected",
    [
        pytest.param(takes_a, CallableHandlerPolicy(), {"a": 1}, id="filtered-to-named"),
        pytest.param(takes_a_b, CallableHandlerPolicy(), {"a": 1, "b": 2}, id="filtered-two"),
        pytest.param(takes_nothing, CallableHandlerPolicy(), {}, id="no-extra-params-ignores"),
        pytest.param(takes_kwargs, CallableHandlerPolicy(), INJECT, id="var-kwargs-gets-all"),
        pytest.param(takes_x_b, CallableHandlerPolicy(arg_map={"a": "x"}), {"x": 1, "b": 2}, id="arg-map-renames"),
        pytest.param(
            takes_kwargs, CallableHandlerPolicy(arg_map={"a": "x"}), {"x": 1, "b": 2, "c": 3}, id="arg-map-with-kwargs"
        ),
        pytest.param(
            keyword_only_subject, CallableHandlerPolicy(), {"request": 5, "a": 1}, id="keyword-only-subject"
        ),
        pytest.param(
            subject_last,
            CallableHandlerPolicy(subject_arg="request"),
            {"request": 5, "a": 1, "c": 3},
            id="subject-arg-by-name",
        ),
    ],
)
def test_injection(handler, policy, expected):
    bus = LocalRequestBus(policies=[policy])
    bus.register(handler)
    assert run(bus.execute(Ping(5), **INJECT)) == expected


async def a_second(request: Ping, a=None, b=None):
    return ("second", a, b)


async def a_third(request: Ping, b=None, a=None):
    return ("third", a, b)


async def a_keyword_only(request: Ping, *, a=None):
    return ("keyword-only", a)


async def a_positional_only(request: Ping, a=None, /, b=None):
    return ("positional-only", a, b)


async def a_var_kwargs(request: Ping, **kwargs):
    return ("var-kwargs", kwargs)


def _wrapped(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        return ("wrapped", args[1:], kwargs)

    return wrapper


class _Methods:
    async def second(self, request: Ping, a=None):
        return ("method", a)


@pytest.mark.parametrize(
    "handler, expected",
    [
        (a_second, ("second", 1, None)),
        (a_third, ("third", 1, None)),
        (a_keyword_only, ("keyword-only", 1)),
        (a_positional_only, ("positional-only", None, None)),
        (a_var_kwargs, ("var-kwargs", {"a": 1})),
        (_wrapped(a_second), ("wrapped", (), {"a": 1})),
        (_Methods().second, ("method", 1)),
    ],
    ids=["second", "third", "keyword-only", "positional-only", "var-kwargs", "wrapped", "method"],
)
def test_one_injected_name_reaches_its_parameter_as_by_keyword(handler, expected):
    """One injected name: passed as the handler would get it by keyword, whatever its position."""
    bus = LocalRequestBus()
    bus.register(handler)
    assert run(bus.execute(Ping(), a=1)) == expected


def test_arg_strict_passes_unknown_names_to_a_handler_that_does_not_take_them():
    """arg_strict=True does not filter: an unknown name reaches the handler (TypeError)."""
    bus = LocalRequestBus(policies=[CallableHandlerPolicy(arg_strict=True)])

    @bus.register
    async def handle(request: Ping, a=None):
        return a

    async def main():
        assert await bus.execute(Ping(), a=1) == 1
        with pytest.raises(TypeError, match="unexpected"):
            await bus.execute(Ping(), a=1, zzz=2)

    run(main())


def test_subject_arg_passes_the_subject_by_name():
    bus = LocalRequestBus(policies=[CallableHandlerPolicy(subject_arg="request")])

    @bus.register
    async def handle(a, request: Ping, b=None):
        return (a, request.value, b)

    assert run(bus.execute(Ping(3), a="A", b="B", zzz="dropped")) == ("A", 3, "B")


async def named_a(request: Ping, a=None):
    return (request, {"a": a})


async def var_kwargs(request: Ping, **kwargs):
    return (request, kwargs)


@pytest.mark.parametrize("handler", [named_a, var_kwargs], ids=["named", "var-kwargs"])
@pytest.mark.parametrize("subject_arg", [None, "request"], ids=["positional", "subject-arg"])
def test_injected_name_equal_to_the_subject_name_does_not_replace_the_subject(handler, subject_arg):
    """The subject parameter is filled by the subject, never by injection (both engines alike)."""
    bus = LocalRequestBus(policies=[CallableHandlerPolicy(subject_arg=subject_arg)])
    bus.register(handler)
    assert run(bus.execute(Ping(1), request="nope", a=2)) == (Ping(1), {"a": 2})


def test_injection_does_not_leak_between_calls():
    bus = LocalRequestBus()

    @bus.register
    async def handle(request: Ping, a="default"):
        return a

    async def main():
        return [await bus.execute(Ping(), a="given"), await bus.execute(Ping())]

    assert run(main()) == ["given", "default"]


def test_registered_method_and_callable_object_receive_injection():
    class Service:
        async def __call__(self, request: Ping, a=None):
            return ("call", a)

    class Handlers:
        async def pong(self, request: Pong, b=None):
            return ("method", b)

    bus = LocalRequestBus()
    bus.register(Service())
    bus.register(Handlers().pong)

    async def main():
        return await bus.execute(Ping(), a=1, b=2), await bus.execute(Pong(), a=1, b=2)

    assert run(main()) == (("call", 1), ("method", 2))


# --- tasks and errors --------------------------------------------------------


def _echo_bus():
    bus = LocalRequestBus()

    @bus.register
    async def ping(request: Ping):
        await asyncio.sleep(0)
        return request.value * 10

    @bus.register
    async def pong(request: Pong):
        return -request.value

    return bus


def test_execute_works_with_create_task():
    bus = _echo_bus()

    async def main():
        task = asyncio.create_task(bus.execute(Ping(4)))
        return await task

    assert run(main()) == 40


def test_execute_works_with_gather():
    bus = _echo_bus()

    async def main():
        return await asyncio.gather(bus.execute(Ping(1)), bus.execute(Pong(2)), bus.execute(Ping(3)))

    assert run(main()) == [10, -2, 30]


def test_missing_handler_inside_gather_and_create_task():
    bus = _echo_bus()

    async def main():
        results = await asyncio.gather(bus.execute(Ping(1)), bus.execute(Unhandled()), return_exceptions=True)
        with pytest.raises(LookupHandlerStoreError):
            await asyncio.create_task(bus.execute(Unhandled()))
        return results

    results = run(main())
    assert results[0] == 10
    assert isinstance(results[1], LookupHandlerStoreError)


class Boom(Exception):
    pass


@pytest.mark.parametrize("suspends", [False, True], ids=["at-once", "after-suspending"])
def test_handler_exception_propagates_unchanged(suspends):
    raised = Boom("bad request")
    bus = LocalRequestBus()

    @bus.register
    async def handle(request: Ping, a=None):
        if suspends:
            await asyncio.sleep(0)
        raise raised

    async def main():
        for inject in ({}, {"a": 1}):
            with pytest.raises(Boom) as caught:
                await bus.execute(Ping(), **inject)
            assert caught.value is raised

    run(main())


def test_handler_that_binds_badly_raises_type_error_when_awaited():
    """A required parameter that nobody injects: TypeError at await, not at execute()."""
    bus = LocalRequestBus()

    @bus.register
    async def handle(request: Ping, needed):
        return needed

    async def main():
        awaitable = bus.execute(Ping())  # must not raise here
        with pytest.raises(TypeError, match="needed"):
            await awaitable
        assert await bus.execute(Ping(), needed="ok") == "ok"

    run(main())


def test_handler_that_binds_badly_with_subject_by_name():
    bus = LocalRequestBus(policies=[CallableHandlerPolicy(subject_arg="request")])

    @bus.register
    async def handle(request: Ping, needed):
        return needed

    async def main():
        awaitable = bus.execute(Ping(), other=1)
        with pytest.raises(TypeError, match="needed"):
            await awaitable

    run(main())
