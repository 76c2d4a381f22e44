"""Handlers: what the buses call for a subject."""

from typing import Any, Callable, Collection, Hashable, Mapping, Optional

from mediator._engine import Invoker
from mediator._safe import safe_repr
from mediator.common.types import ActionResult, ActionSubject

__all__ = ["HandlerInfo", "Handler", "CallableHandler"]


class HandlerInfo:
    """What a handler serves (``key``) and where it came from (``obj``)."""

    @property
    def key(self) -> Hashable:
        """The key an action is matched on: the subject's class."""
        raise NotImplementedError

    @property
    def obj(self) -> Any:
        """The object the handler was made from (a function, a bound method...)."""
        raise NotImplementedError


class Handler(HandlerInfo):
    """A handler as the modifier stack sees it: ``await handler(action) -> ActionResult``."""

    async def __call__(self, action: ActionSubject) -> ActionResult:
        raise NotImplementedError


class CallableHandler(Handler):
    """A handler that calls ``fn`` through a call plan compiled once, here.

    ``subject_name`` set: the subject is passed by that name, else positionally.
    ``arg_map`` renames injected kwargs (injected name -> parameter name);
    ``allow_args`` is the set of parameter names that may receive them
    (``None``: pass them all); ``subject_param``, the subject's parameter, never does.
    ``kind`` is how ``fn`` answers: ``"async"`` (a coroutine), ``"sync"`` (a value, or an
    awaitable) or ``"stream"`` (an async generator).
    """

    __slots__ = ("_obj", "_key", "invoker")

    def __init__(
        self,
        obj: Any,
        fn: Callable[..., Any],
        key: Hashable,
        subject_name: Optional[str],
        arg_map: Mapping[str, str],
        allow_args: Optional[Collection[str]],
        subject_param: Optional[str] = None,
        kind: str = "async",
    ) -> None:
        self._obj = obj
        self._key = key
        self.invoker = Invoker(fn, subject_name, dict(arg_map), allow_args, subject_param, kind)

    @property
    def key(self) -> Hashable:
        return self._key

    @property
    def obj(self) -> Any:
        return self._obj

    @property
    def fn(self) -> Callable[..., Any]:
        """The callable actually invoked."""
        return self.invoker.fn

    @property
    def kind(self) -> str:
        """``"async"``, ``"sync"`` or ``"stream"``: see the class docstring."""
        return self.invoker.kind

    def __call__(self, action: ActionSubject) -> Any:  # awaitable ActionResult
        return self.invoker.action(action)

    def __repr__(self) -> str:
        return f"<CallableHandler {describe(self._obj)} for {describe(self._key)}>"


def describe(obj: Any) -> str:
    """A short name for messages: ``module.qualname``, else the repr (never failing)."""
    try:
        name = getattr(obj, "__qualname__", None)
        module = getattr(obj, "__module__", None)
    except Exception:  # an attribute that raises: the repr will say what it can
        name = module = None
    if isinstance(name, str) and isinstance(module, str):
        return f"{module}.{name}"
    return safe_repr(obj)
