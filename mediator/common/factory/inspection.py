"""Reading a callable's signature once, at registration, into a ``CallableHandler``."""

import functools
import inspect
import types
import typing
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_VARKEYWORDS, Parameter
from types import FunctionType, MethodType
from typing import Any, List, NamedTuple, Optional

from mediator._safe import safe_repr
from mediator.common.factory.base import HandlerFactoryError, IncompatibleHandlerFactoryError
from mediator.common.factory.policies import CallableHandlerPolicy
from mediator.common.handler import CallableHandler, describe

__all__ = ["inspect_callable"]

_NAMED = (Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY)
# isinstance(x, type) holds for these on some versions (list[int] below 3.11), yet they are no key.
_NOT_CLASSES = (types.GenericAlias,) if hasattr(types, "GenericAlias") else ()


class _Param(NamedTuple):
    name: str
    kind: Any  # an inspect.Parameter kind
    annotation: Any  # Parameter.empty when there is none


class _Signature(NamedTuple):
    named: List[_Param]  # positional-only, positional-or-keyword and keyword-only
    var_keyword: bool
    kind: str  # "async" (async def), "stream" (async generator) or "sync" (def)


def inspect_callable(obj: Any, fn: Any, policy: CallableHandlerPolicy, label: Any) -> CallableHandler:
    """Make a handler that calls ``fn`` (``obj`` itself, or one of its attributes).

    Raises ``IncompatibleHandlerFactoryError`` when ``fn`` does not fit the policy and
    ``HandlerFactoryError`` when it fits but is wrong (``label`` names it in both).
    """
    if not callable(fn):
        raise IncompatibleHandlerFactoryError(f"{label} is not callable")
    if isinstance(fn, type):
        raise HandlerFactoryError(f"{label} is a class, not an async function: register a function or an instance")
    target = fn if inspect.isroutine(fn) or isinstance(fn, functools.partial) else fn.__call__
    signature = _from_code(target) or _from_inspect(target, label)
    named = signature.named

    if policy.subject_arg:
        subject = next((param for param in named if param.name == policy.subject_arg), None)
        if subject is None:
            raise IncompatibleHandlerFactoryError(f"{label} has no parameter named {policy.subject_arg!r}")
    elif named:
        subject = named[0]
    else:
        raise IncompatibleHandlerFactoryError(f"{label} has no named parameter to take the subject")

    key = _subject_class(target, subject, label)

    by_name = subject.kind == Parameter.KEYWORD_ONLY or (
        policy.subject_as_keyword and subject.kind != Parameter.POSITIONAL_ONLY
    )
    accepts_all = policy.arg_strict or signature.var_keyword
    allow_args = None if accepts_all else {
        p.name for p in named if p.kind != Parameter.POSITIONAL_ONLY and p.name != subject.name
    }
    return CallableHandler(
        obj=obj,
        fn=fn,
        key=key,
        subject_name=subject.name if by_name else None,
        arg_map=policy.arg_map,
        allow_args=allow_args,
        subject_param=subject.name,
        kind=signature.kind,
    )


def _from_code(target: Any) -> Optional[_Signature]:
    """The signature of a plain function or method read off its code object, or ``None``.

    Registration-time speed: ``inspect.signature`` costs several times more. Anything
    that is not a plain function (wrapped, partial, builtin...) goes to ``inspect``.
    """
    function = target.__func__ if type(target) is MethodType else target
    if type(function) is not FunctionType or "__wrapped__" in function.__dict__ or "__signature__" in function.__dict__:
        return None
    code = function.__code__
    positional, keyword_only = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames[: positional + keyword_only]
    kinds = (
        [Parameter.POSITIONAL_ONLY] * code.co_posonlyargcount
        + [Parameter.POSITIONAL_OR_KEYWORD] * (positional - code.co_posonlyargcount)
        + [Parameter.KEYWORD_ONLY] * keyword_only
    )
    annotations = function.__annotations__
    named = [_Param(name, kind, annotations.get(name, Parameter.empty)) for name, kind in zip(names, kinds)]
    if function is not target and positional:  # a bound method: its first parameter is taken
        del named[0]
    return _Signature(named, bool(code.co_flags & CO_VARKEYWORDS), _kind(code.co_flags))


def _from_inspect(target: Any, label: Any) -> _Signature:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError) as error:
        raise IncompatibleHandlerFactoryError(f"{label}: its signature cannot be read ({error})") from error
    parameters = signature.parameters.values()
    return _Signature(
        [_Param(p.name, p.kind, p.annotation) for p in parameters if p.kind in _NAMED],
        any(p.kind == Parameter.VAR_KEYWORD for p in parameters),
        _kind_of(target),
    )


def _kind_of(target: Any) -> str:
    """How ``target`` answers, looking through partials and bound methods (3.9 does not)."""
    function = target
    while True:
        if isinstance(function, functools.partial):
            function = function.func
        elif isinstance(function, MethodType):
            function = function.__func__
        else:
            break
    if type(function) is FunctionType:
        return _kind(function.__code__.co_flags)
    return "async" if inspect.iscoroutinefunction(target) else "stream" if inspect.isasyncgenfunction(target) else "sync"


def _kind(flags: int) -> str:
    return "async" if flags & CO_COROUTINE else "stream" if flags & CO_ASYNC_GENERATOR else "sync"


def _subject_class(target: Any, subject: _Param, label: Any) -> type:
    """The class annotated on the subject parameter (string annotations resolved)."""
    annotation = subject.annotation
    if annotation is Parameter.empty:
        raise HandlerFactoryError(f"{label}: the subject parameter {subject.name!r} has no type annotation")
    if isinstance(annotation, str):
        annotation = _resolve(target, subject.name, annotation, label)
    if not isinstance(annotation, type) or isinstance(annotation, _NOT_CLASSES) or annotation is typing.Any:
        raise HandlerFactoryError(
            f"{label}: the annotation of the subject parameter {subject.name!r} is {safe_repr(annotation)}, not a class"
        )
    return annotation


def _resolve(target: Any, name: str, annotation: str, label: Any) -> Any:
    """Evaluate the subject's string annotation where the function was defined.

    Only this one annotation: others may name types known to type checkers alone.
    """
    source = target
    while True:
        if isinstance(source, functools.partial):
            source = source.func
        elif hasattr(source, "__func__"):
            source = source.__func__
        elif hasattr(source, "__wrapped__"):
            source = source.__wrapped__
        else:
            break
    try:
        return typing.get_type_hints(source)[name]
    except Exception:
        pass
    try:
        return eval(annotation, getattr(source, "__globals__", {}))  # noqa: S307 - the user's own annotation
    except Exception as error:
        raise HandlerFactoryError(
            f"{label}: the annotation {annotation!r} of the subject parameter {name!r} cannot be resolved ({safe_repr(error)})"
        ) from error


class HandlerLabel:
    """How error messages name a handler object (or one of its attributes).

    Made into text only when a message is written: registration stays cheap.
    """

    __slots__ = ("obj", "attribute")

    def __init__(self, obj: Any, attribute: Optional[str] = None) -> None:
        self.obj = obj
        self.attribute = attribute

    def __str__(self) -> str:
        if self.attribute is None:
            return f"handler {describe(self.obj)}"
        return f"handler method {self.attribute!r} of {safe_repr(self.obj)}"
