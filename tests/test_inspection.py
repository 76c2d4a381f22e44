"""Handler inspection: which objects the policies accept, the key they find, and every error path."""

import __future__

import asyncio
import functools
from typing import Any, List, Optional

import pytest

from mediator.common.factory import (
    CallableHandlerFactory,
    CallableHandlerPolicy,
    HandlerFactoryCascade,
    HandlerFactoryCascadeError,
    HandlerFactoryError,
    IncompatibleHandlerFactoryCascadeError,
    IncompatibleHandlerFactoryError,
    InspectionHandlerFactoryCascadeError,
    MethodHandlerFactory,
    MethodHandlerPolicy,
)
from mediator.common.handler import Handler, HandlerInfo
from mediator.common.types import ActionResult, ActionSubject
from mediator.request import LocalRequestBus


class Foo:
    pass


class Bar:
    pass


# --- helpers -------------------------------------------------------------------------------


def make(obj, *policies):
    """The handler the cascade of ``policies`` (default: one CallableHandlerPolicy) makes of ``obj``."""
    return HandlerFactoryCascade(policies or [CallableHandlerPolicy()])(obj)


def call(handler, subject, **inject):
    """Run ``handler`` on ``subject`` the way a modifier stack does; its unwrapped result."""

    async def main():
        result = await handler(ActionSubject(subject, inject))
        assert isinstance(result, ActionResult)
        return result.result

    return asyncio.run(main())


def inspection_error(obj, *policies):
    with pytest.raises(InspectionHandlerFactoryCascadeError) as info:
        make(obj, *policies)
    return info.value


def incompatible_error(obj, *policies):
    with pytest.raises(IncompatibleHandlerFactoryCascadeError) as info:
        make(obj, *policies)
    return info.value


def future_module(source):
    """Run ``source`` as a module compiled with ``from __future__ import annotations``."""
    namespace = {"__name__": "future_handlers"}
    code = compile(source, "<future_handlers>", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace


FUTURE_SOURCE = """
class Event:
    pass

async def handle(event: Event, count: int = 0):
    return (event, count)

class Listener:
    async def __call__(self, event: Event):
        return ("object", event)

    async def on(self, event: Event):
        return ("method", event)
"""


# --- what the callable policy accepts ------------------------------------------------------------


async def plain(x: Foo):
    return ("plain", x)


async def string_annotated(x: "Foo"):
    return ("string", x)


async def keyword_only(*, x: Foo):
    return ("keyword-only", x)


async def after_var_args(*args, x: Foo):
    return ("after *args", args, x)


async def positional_only(x: Foo, /):
    return ("positional-only", x)


async def with_extras(x: Foo, y: int = 0, *args, **kwargs):
    return ("extras", x)


class AsyncCallable:
    async def __call__(self, x: Foo):
        return ("object", x)


class WithMethod:
    async def handle(self, x: Foo):
        return ("method", self, x)


def _decorated():
    def decorator(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            return await fn(*args, **kwargs)

        return wrapper

    @decorator
    async def decorated(x: "Foo"):
        return ("decorated", x)

    return decorated


async def _two(tag: str, x: Foo):
    return (tag, x)


ACCEPTED = {
    "function": (plain, ("plain",)),
    "string annotation": (string_annotated, ("string",)),
    "keyword-only subject": (keyword_only, ("keyword-only",)),
    "keyword-only after *args": (after_var_args, ("after *args", ())),
    "positional-only subject": (positional_only, ("positional-only",)),
    "extra parameters": (with_extras, ("extras",)),
    "object with async __call__": (AsyncCallable(), ("object",)),
    "functools.partial": (functools.partial(_two, "partial"), ("partial",)),
    "functools.wraps decorator": (_decorated(), ("decorated",)),
}


@pytest.mark.parametrize("obj, expected", ACCEPTED.values(), ids=list(ACCEPTED))
def test_callable_policy_accepts(obj, expected):
    """The key is the subject's annotated class, and the handler passes the subject through."""
    handler = make(obj)
    assert isinstance(handler, Handler) and isinstance(handler, HandlerInfo)
    assert handler.key is Foo
    assert handler.obj is obj
    subject = Foo()
    assert call(handler, subject) == (*expected, subject)


def test_bound_method_is_a_handler():
    instance = WithMethod()
    handler = make(instance.handle)
    assert handler.key is Foo
    assert handler.obj == instance.handle
    subject = Foo()
    assert call(handler, subject) == ("method", instance, subject)


def test_future_annotations_are_resolved():
    """``from __future__ import annotations`` makes every annotation a string: they still resolve."""
    module = future_module(FUTURE_SOURCE)
    event_cls = module["Event"]
    event = event_cls()
    for obj, expected in [
        (module["handle"], (event, 0)),
        (module["Listener"](), ("object", event)),
    ]:
        handler = make(obj)
        assert handler.key is event_cls
        assert call(handler, event) == expected
    listener = module["Listener"]()
    handler = make(listener, MethodHandlerPolicy("on"))
    assert handler.key is event_cls
    assert call(handler, event) == ("method", event)


def test_string_subject_resolves_even_if_another_annotation_cannot():
    """Only the subject's class matters: a name imported under TYPE_CHECKING elsewhere must not break it."""
    module = future_module(
        "class Event:\n    pass\n\n"
        "async def handle(event: Event, session: SessionOnlyKnownToTypeCheckers = None):\n"
        "    return event\n"
    )
    handler = make(module["handle"])
    assert handler.key is module["Event"]


def test_subject_is_the_first_named_parameter():
    async def handler_fn(x: Foo, y: Bar):
        return (x, y)

    assert make(handler_fn).key is Foo


def test_keyword_only_subject_is_passed_by_name():
    """Through a real bus: positional passing would raise a TypeError."""
    bus = LocalRequestBus()
    bus.register(keyword_only)
    subject = Foo()
    assert asyncio.run(bus.execute(subject)) == ("keyword-only", subject)


# --- subject_arg ------------------------------------------------------------------------------------


async def subject_second(first: int = 0, x: Foo = None):
    return (first, x)


def test_subject_arg_picks_the_parameter_and_passes_it_by_name():
    handler = make(subject_second, CallableHandlerPolicy(subject_arg="x"))
    assert handler.key is Foo
    subject = Foo()
    assert call(handler, subject) == (0, subject)


def test_subject_arg_through_a_bus():
    bus = LocalRequestBus(policies=[CallableHandlerPolicy(subject_arg="x")])
    bus.register(subject_second)
    subject = Foo()
    assert asyncio.run(bus.execute(subject, first=5)) == (5, subject)


def test_subject_arg_on_a_keyword_only_parameter():
    async def handler_fn(a: int = 1, *, x: Foo):
        return (a, x)

    handler = make(handler_fn, CallableHandlerPolicy(subject_arg="x"))
    subject = Foo()
    assert handler.key is Foo
    assert call(handler, subject) == (1, subject)


def test_subject_arg_on_a_positional_only_parameter_is_passed_positionally():
    async def handler_fn(x: Foo, /, y: int = 2):
        return (x, y)

    handler = make(handler_fn, CallableHandlerPolicy(subject_arg="x"))
    subject = Foo()
    assert call(handler, subject) == (subject, 2)


@pytest.mark.parametrize("subject_arg", ["missing", "args", "kwargs"])
def test_subject_arg_not_found_is_incompatible(subject_arg):
    """``*args``/``**kwargs`` are not named parameters: naming them finds nothing."""

    async def handler_fn(x: Foo, *args, **kwargs):
        pass

    error = incompatible_error(handler_fn, CallableHandlerPolicy(subject_arg=subject_arg))
    [(factory, cause)] = error.factory_errors
    assert isinstance(factory, CallableHandlerFactory)
    assert isinstance(cause, IncompatibleHandlerFactoryError) and isinstance(cause, TypeError)
    assert repr(subject_arg) in str(cause)
    assert "handler_fn" in str(cause)


# --- incompatible objects ---------------------------------------------------------------------------


async def no_parameter():
    pass


async def only_variadic(*args, **kwargs):
    pass


@pytest.mark.parametrize(
    "obj, name",
    [
        (42, "42"),
        ("handler", "'handler'"),
        (None, "None"),
        (no_parameter, "no_parameter"),
        (only_variadic, "only_variadic"),
    ],
    ids=["int", "str", "None", "no parameter", "only *args/**kwargs"],
)
def test_incompatible_objects(obj, name):
    """Not callable, or no named parameter for the subject: incompatible, a TypeError."""
    error = incompatible_error(obj)
    assert isinstance(error, HandlerFactoryCascadeError)
    [(factory, cause)] = error.factory_errors
    assert isinstance(factory, CallableHandlerFactory)
    assert isinstance(cause, IncompatibleHandlerFactoryError)
    assert isinstance(cause, TypeError) and isinstance(cause, HandlerFactoryError)
    assert name in str(cause)
    assert name in str(error)


def test_factory_raises_incompatible_directly():
    """A factory on its own raises the plain ``IncompatibleHandlerFactoryError``."""
    factory = CallableHandlerFactory(CallableHandlerPolicy())
    with pytest.raises(TypeError) as info:
        factory.create(no_parameter)
    assert isinstance(info.value, IncompatibleHandlerFactoryError)
    assert "no_parameter" in str(info.value)


# --- inspection errors --------------------------------------------------------------------------


async def not_annotated(x):
    pass


async def not_annotated_first(x, y: Foo):
    pass


async def list_annotated(x: List[int]):
    pass


async def optional_annotated(x: Optional[Foo]):
    pass


async def any_annotated(x: Any):
    pass


async def unresolvable(x: "NoSuchClass"):  # noqa: F821
    pass


async def value_annotated(x: 3):  # type: ignore[valid-type]
    pass


async def builtin_generic_annotated(x: list[int]):
    pass


@pytest.mark.parametrize(
    "obj, words",
    [
        (not_annotated, ["'x'", "annotation"]),
        (not_annotated_first, ["'x'", "annotation"]),
        (list_annotated, ["'x'", "List[int]"]),
        (optional_annotated, ["'x'", "Foo"]),
        (any_annotated, ["'x'", "Any"]),
        (unresolvable, ["'x'", "NoSuchClass"]),
        (value_annotated, ["'x'", "is 3,"]),
        (builtin_generic_annotated, ["'x'", "list[int]"]),
    ],
    ids=["none", "none on first", "List[int]", "Optional", "Any", "unresolvable string", "a value", "list[int]"],
)
def test_subject_annotation_must_be_a_class(obj, words):
    """No annotation, or one that is not a class: an inspection error naming the handler and parameter."""
    error = inspection_error(obj)
    assert isinstance(error, HandlerFactoryCascadeError) and not isinstance(error, TypeError)
    assert isinstance(error.factory, CallableHandlerFactory)
    assert isinstance(error.__cause__, HandlerFactoryError)
    assert not isinstance(error.__cause__, IncompatibleHandlerFactoryError)
    message = str(error)
    assert obj.__qualname__ in message
    for word in words:
        assert word in message


def sync_function(x: Foo):
    return ("sync", x)


class SyncCallable:
    def __call__(self, x: Foo):
        return ("sync", x)


async def async_generator(x: Foo):
    yield x


def coroutine_returning(x: Foo):
    return plain(x)


@pytest.mark.parametrize(
    "obj, kind, result",
    [
        (sync_function, "sync", "sync"),
        (SyncCallable(), "sync", "sync"),
        (coroutine_returning, "sync", "plain"),
        (functools.partial(sync_function), "sync", "sync"),
        (plain, "async", "plain"),
    ],
    ids=["function", "object", "returns a coroutine", "partial", "async"],
)
def test_plain_def_handlers_are_accepted(obj, kind, result):
    """Unlike 0.7: a sync handler's value (or the awaitable it returns) is its result."""
    handler = make(obj)
    assert handler.key is Foo
    assert handler.kind == kind
    subject = Foo()
    assert call(handler, subject) == (result, subject)


def test_async_generator_handlers_are_streams():
    handler = make(async_generator)
    assert (handler.key, handler.kind) == (Foo, "stream")


def untyped(x):
    pass


class RequestHandlerClass:
    """Registered instead of an instance of it: a common mistake."""

    def __init__(self, x: Foo):
        self.x = x

    async def __call__(self, x: Foo):
        pass


@pytest.mark.parametrize("cls", [RequestHandlerClass, Foo])
def test_class_registered_by_mistake(cls):
    error = inspection_error(cls)
    assert isinstance(error.factory, CallableHandlerFactory)
    assert cls.__qualname__ in str(error)
    assert "class" in str(error)


def test_bus_registration_raises_the_cascade_error_and_keeps_nothing():
    bus = LocalRequestBus()
    with pytest.raises(InspectionHandlerFactoryCascadeError) as info:
        bus.register(untyped)
    assert "untyped" in str(info.value)
    assert list(bus) == []


# --- the cascade: first fit wins, an inspection error stops it -------------------------------------


class Both:
    """Fits both a method policy (``handle``) and the callable policy (``__call__``)."""

    async def handle(self, x: Foo):
        return "handle"

    async def __call__(self, x: Bar):
        return "call"


class SyncCallAsyncHandle:
    def __call__(self, x: "Unresolvable"):  # noqa: F821
        return "call"

    async def handle(self, x: Foo):
        return "handle"


def test_cascade_uses_the_first_policy_that_fits():
    assert make(Both(), MethodHandlerPolicy("handle"), CallableHandlerPolicy()).key is Foo
    assert make(Both(), CallableHandlerPolicy(), MethodHandlerPolicy("handle")).key is Bar


def test_cascade_moves_on_after_an_incompatible_policy():
    handler = make(plain, MethodHandlerPolicy("handle"), CallableHandlerPolicy())
    assert handler.key is Foo
    assert call(handler, Foo())[0] == "plain"


def test_cascade_stops_at_an_inspection_error():
    """A later policy that would fit is not tried: the object was found wrong, not unfit."""
    obj = SyncCallAsyncHandle()
    error = inspection_error(obj, CallableHandlerPolicy(), MethodHandlerPolicy("handle"))
    assert isinstance(error.factory, CallableHandlerFactory)
    assert "SyncCallAsyncHandle" in str(error)
    # the other order picks the method
    assert call(make(obj, MethodHandlerPolicy("handle"), CallableHandlerPolicy()), Foo()) == "handle"


def test_cascade_collects_each_factory_error_in_order():
    error = incompatible_error(42, MethodHandlerPolicy("handle"), CallableHandlerPolicy(subject_arg="x"))
    factories = [factory for factory, _ in error.factory_errors]
    assert [type(factory) for factory in factories] == [MethodHandlerFactory, CallableHandlerFactory]
    for _, cause in error.factory_errors:
        assert isinstance(cause, IncompatibleHandlerFactoryError)
        assert "42" in str(cause)
    assert "'handle'" in str(error.factory_errors[0][1])
    assert "42" in str(error)


# --- the method policy ----------------------------------------------------------------------------


class Base:
    pass


class Service(Base):
    def __init__(self):
        self.calls = []

    async def handle(self, x: Foo, extra: int = 0):
        self.calls.append(x)
        return ("handled", self, x)


class Other:
    async def handle(self, x: Foo):
        pass


class Attributes:
    handle = 3

    def sync_handle(self, x: Foo):
        pass

    async def untyped(self, x):
        pass

    async def no_subject(self):
        pass


def test_method_policy_uses_the_attribute():
    service = Service()
    handler = make(service, MethodHandlerPolicy("handle"))
    assert handler.key is Foo
    assert handler.obj is service, "the handler keeps the registered object, not the bound method"
    subject = Foo()
    assert call(handler, subject) == ("handled", service, subject)
    assert service.calls == [subject]


def test_method_policy_subtype_of_accepts_subclasses():
    handler = make(Service(), MethodHandlerPolicy("handle", subtype_of=[Bar, Base]))
    assert handler.key is Foo


def test_method_policy_subtype_of_rejects_other_types():
    other = Other()
    error = incompatible_error(other, MethodHandlerPolicy("handle", subtype_of=[Base]))
    [(factory, cause)] = error.factory_errors
    assert isinstance(factory, MethodHandlerFactory)
    assert isinstance(cause, IncompatibleHandlerFactoryError)
    assert repr(other) in str(cause)
    assert "Base" in str(cause)


@pytest.mark.parametrize("name", ["missing", "handle", "no_subject"], ids=["missing", "not callable", "no subject"])
def test_method_policy_incompatible_attribute(name):
    error = incompatible_error(Attributes(), MethodHandlerPolicy(name))
    [(factory, cause)] = error.factory_errors
    assert isinstance(factory, MethodHandlerFactory)
    assert isinstance(cause, IncompatibleHandlerFactoryError)
    assert repr(name) in str(cause)
    assert "Attributes" in str(cause)


@pytest.mark.parametrize("name, word", [("untyped", "'x'")])
def test_method_policy_inspection_errors(name, word):
    error = inspection_error(Attributes(), MethodHandlerPolicy(name))
    assert isinstance(error.factory, MethodHandlerFactory)
    assert repr(name) in str(error)
    assert "Attributes" in str(error)
    assert word in str(error)


def test_method_policy_inner_policy_subject_arg():
    class Named:
        async def handle(self, first: int = 0, cmd: Foo = None):
            return (first, cmd)

    handler = make(Named(), MethodHandlerPolicy("handle", policy=CallableHandlerPolicy(subject_arg="cmd")))
    subject = Foo()
    assert handler.key is Foo
    assert call(handler, subject) == (0, subject)


def test_method_policy_on_a_class_with_class_and_static_methods():
    class Handlers:
        @classmethod
        async def on_foo(cls, x: Foo):
            return (cls, x)

        @staticmethod
        async def on_bar(x: Bar):
            return ("static", x)

    foo_handler = make(Handlers, MethodHandlerPolicy("on_foo"))
    bar_handler = make(Handlers, MethodHandlerPolicy("on_bar"))
    assert (foo_handler.key, bar_handler.key) == (Foo, Bar)
    foo, bar = Foo(), Bar()
    assert call(foo_handler, foo) == (Handlers, foo)
    assert call(bar_handler, bar) == ("static", bar)


def test_method_policy_through_a_bus():
    service = Service()
    bus = LocalRequestBus(policies=[MethodHandlerPolicy("handle", subtype_of=[Base])])
    assert bus.register(service) is service
    subject = Foo()
    assert asyncio.run(bus.execute(subject)) == ("handled", service, subject)

