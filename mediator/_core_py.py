"""Pure-Python dispatch engine: the twin of ``_core.pyx``, same names, same behaviour.

Everything here runs per dispatch, so it is written for the hot path: call plans are
decided at registration (``Invoker``, ``Route``) and a dispatch is a dict lookup plus
the handler call. ``mediator._engine`` picks this module or the compiled one.
"""

import asyncio
import inspect
import logging
from collections.abc import Mapping
from contextvars import copy_context
from types import CoroutineType, FunctionType, MethodType
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from mediator._compat import add_note, mark_coroutine_function, resume_in_task
from mediator._hook_runner import hook_runner
from mediator._safe import HandlerIdentity, SafeRepr, safe_repr
from mediator.errors import handler_errors

__all__ = [
    "ActionSubject",
    "ActionResult",
    "Invoker",
    "Route",
    "PipelineRoute",
    "RequestDispatcher",
    "EventDispatcher",
    "log_handler_error",
]

logger = logging.getLogger("mediator")

# How an Invoker treats injected keyword arguments.
_DROP = 0  # the handler takes none: ignore them
_FILTER = 1  # keep those named in a precomputed set
_RENAME_FILTER = 2  # rename through arg_map, then keep the known names
_ALL = 3  # pass them all (after renaming): **kwargs handlers and arg_strict


class ActionSubject:
    """An action on its way through a modifier stack: the subject and injected kwargs."""

    __slots__ = ("subject", "inject")

    def __init__(self, subject: Any, inject: Dict[str, Any]) -> None:
        self.subject = subject
        self.inject = inject

    @property
    def key(self) -> type:
        """The handler key of this action: ``type(subject)``."""
        return type(self.subject)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self.subject, self.inject) == (other.subject, other.inject)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the 0.7 dataclass

    def __repr__(self) -> str:
        return f"ActionSubject(subject={self.subject!r}, inject={self.inject!r})"


class ActionResult:
    """The value a handler returned, as it travels back out of a modifier stack."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.result == other.result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ActionResult(result={self.result!r})"


class Invoker:
    """A handler's call plan, compiled once at registration.

    ``invoker(subject, inject)`` calls ``fn`` and returns its awaitable untouched:
    the subject goes positionally or by ``subject_name``; injected kwargs are
    dropped, filtered to ``allow_args``, renamed through ``arg_map``, or passed whole
    (``allow_args=None``).
    """

    __slots__ = ("fn", "subject_name", "subject_param", "kind", "_mode", "_names", "_renames", "_pairs")

    def __init__(
        self,
        fn: Callable[..., Any],
        subject_name: Optional[str] = None,
        arg_map: Optional[Dict[str, str]] = None,
        allow_args: Optional[Iterable[str]] = None,
        subject_param: Optional[str] = None,
        kind: str = "async",
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"Invoker kind must be one of {', '.join(_KINDS)}, got {safe_repr(kind)}")
        self.fn = fn
        self.kind = kind
        self.subject_name = subject_name or None
        # The subject's parameter is filled by the subject, never by injection.
        self.subject_param = subject_param or self.subject_name
        self._renames = dict(arg_map or {})
        self._names: frozenset = frozenset()
        self._pairs: Tuple[Tuple[str, str], ...] = ()
        if allow_args is None:
            self._mode = _ALL
            return
        self._names = frozenset(allow_args) - {self.subject_param}
        if not self._names:
            self._mode = _DROP
        elif self._renames:
            self._mode = _RENAME_FILTER
            self._pairs = _rename_pairs(self._renames, self._names)
        else:
            self._mode = _FILTER

    def __call__(self, subject: Any, inject: Dict[str, Any]) -> Any:
        result = self._call(subject, inject)
        if self.kind == "async":
            return result
        if self.kind == "sync" and _is_awaitable(result):
            return result if asyncio.iscoroutine(result) else _awaited(result)
        return _value(result)  # a plain value, or a stream's async generator

    def _call(self, subject: Any, inject: Dict[str, Any]) -> Any:
        mode = self._mode
        if mode == _DROP or not inject:
            kwargs = None
        elif mode == _FILTER:
            kwargs = inject
            names = self._names
            for name in inject:
                if name not in names:
                    kwargs = {k: v for k, v in inject.items() if k in names}
                    break
        elif mode == _RENAME_FILTER:
            kwargs = {param: inject[src] for src, param in self._pairs if src in inject}
        else:
            renames = self._renames
            kwargs = {renames.get(k, k): v for k, v in inject.items()} if renames else inject
            if self.subject_param in kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k != self.subject_param}
        if self.subject_name is None:
            return self.fn(subject, **kwargs) if kwargs else self.fn(subject)
        if kwargs:
            kwargs = dict(kwargs)
            kwargs[self.subject_name] = subject
            return self.fn(**kwargs)
        return self.fn(**{self.subject_name: subject})

    async def action(self, action: ActionSubject) -> ActionResult:
        """Call through the modifier interface: ``ActionSubject`` in, ``ActionResult`` out."""
        if not isinstance(action, ActionSubject):
            raise _not_an_action(self.fn, action)
        inject = action.inject
        if type(inject) is not dict:
            inject = _action_inject(inject, self.fn)
        return ActionResult(await self(action.subject, inject))


def _action_inject(inject: Any, handler: Any) -> Dict[str, Any]:
    """The keyword arguments a modifier stack hands its handler when a layer set
    ``action.inject`` to something else than a dict: any mapping (copied, as ``**`` would)
    or None (nothing)."""
    if inject is None:
        return {}
    if isinstance(inject, Mapping):
        return dict(inject)
    raise TypeError(
        f"a modifier of {handler!r} set ActionSubject.inject to a {type(inject).__name__}: "
        f"it must be a mapping of keyword arguments"
    )


_KINDS = ("async", "sync", "stream")

# Per-dispatch ActionSubject and ActionResult are made with _new and two slot stores:
# a call of the class (and of its Python __init__) costs about twice as much.
_new = object.__new__


def _is_awaitable(value: Any) -> bool:
    """Whether a sync handler returned an awaitable (a decorated async function, say)."""
    return hasattr(type(value), "__await__")


async def _value(value: Any) -> Any:
    return value


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _rename_pairs(renames: Dict[str, str], names: frozenset) -> Tuple[Tuple[str, str], ...]:
    """(injected name, parameter name) for every injected name that reaches a parameter."""
    pairs = [(name, name) for name in sorted(names) if name not in renames]
    pairs += [(src, dst) for src, dst in renames.items() if dst in names]
    return tuple(pairs)


class Route:
    """A registered handler ready to dispatch: its invoker inside synchronous hooks.

    Hook layers are given outermost first as three aligned tuples (``None`` where a
    layer has no such stage). Befores run in order, then the handler; afters (which
    may replace the result) and error hooks unwind in reverse, exactly as nested
    ``try`` blocks would, but with no coroutine per layer. A hooked route starts when it
    is first awaited, as an ``async def`` would: its hooks run in the awaiting task's
    context, not in the caller's.
    """

    __slots__ = (
        "handler", "invoker", "_pipeline", "_run", "_errors", "_enter_steps", "_exit_steps",
        "_direct", "_ignores_inject", "_kw_names", "_kw_all", "_kw_exclude", "_kw_next", "_inline", "_stream",
    )

    def __init__(
        self,
        handler: Any,
        invoker: Invoker,
        befores: Tuple[Optional[Callable[..., Any]], ...] = (),
        afters: Tuple[Optional[Callable[..., Any]], ...] = (),
        errors: Tuple[Optional[Callable[..., Any]], ...] = (),
    ) -> None:
        _check_layers(befores, afters, errors)
        self.handler = handler
        self.invoker = invoker
        self._pipeline = None  # see PipelineRoute
        # The stages there are, with the depth of their layer (what an error unwinds):
        # befores in order, afters innermost first.
        self._enter_steps: Tuple[Tuple[int, Callable[..., Any]], ...] = ()
        self._exit_steps: Tuple[Tuple[int, Callable[..., Any]], ...] = ()
        self._errors: Tuple[Optional[Callable[..., Any]], ...] = ()
        if befores or afters or errors:
            self._enter_steps = tuple((depth, stage) for depth, stage in enumerate(befores) if stage is not None)
            self._exit_steps = tuple((depth, stage) for depth, stage in enumerate(afters) if stage is not None)[::-1]
            self._errors = errors if any(errors) else ()
        hooked = bool(self._enter_steps or self._exit_steps or self._errors)
        self._inline = invoker.kind == "sync"  # an event bus runs it in place, without a task
        self._stream = invoker.kind == "stream"  # answers bus.stream(), not execute()
        # fn(subject) when that is the whole call of the handler, else None: the invoker.
        simple = invoker.subject_name is None and invoker.kind == "async"
        # The route's whole call, run(subject, inject), for execute and invoke (None for a
        # stream, which execute refuses): the invoker, or for a hooked route a coroutine
        # running the hooks around it, straight-line where there is no error stage to unwind.
        self._run: Optional[Callable[[Any, Dict[str, Any]], Any]] = invoker
        if hooked and self._errors:
            # named after the handler, as its coroutine is (a "never awaited" warning says so)
            self._run = MethodType(_named(Route._run_unwinding, _name_of(invoker.fn)), self)
        elif hooked:
            subject_only = simple and invoker._mode == _DROP  # the handler takes fn(subject)
            self._run = hook_runner(
                [stage for _, stage in self._enter_steps],
                invoker.fn if subject_only else invoker,
                subject_only,
                [stage for _, stage in self._exit_steps],
                _name_of(invoker.fn),
            )
        if self._stream:
            self._run = None
        # The handler function itself, when fn(subject) is the whole call (see execute).
        direct = simple and not hooked
        self._direct = invoker.fn if direct else None
        self._ignores_inject = direct and invoker._mode == _DROP
        # Injected names _direct takes as they are: a set, or all of them (_kw_all).
        self._kw_names = invoker._names if direct and invoker._mode == _FILTER else None
        self._kw_all = direct and invoker._mode == _ALL and not invoker._renames
        self._kw_exclude = invoker.subject_param
        # An injected name _direct takes as its second argument: one such, alone, is passed
        # by position, without spreading a kwargs dict (the most common injection).
        next_param = _next_positional(invoker.fn) if direct else None
        takes_it = next_param is not None and next_param != invoker.subject_param and (
            self._kw_all or (self._kw_names is not None and next_param in self._kw_names)
        )
        self._kw_next = next_param if takes_it else None

    def invoke(self, subject: Any, inject: Dict[str, Any]) -> Any:
        """Start the handler; returns an awaitable of its (hook-processed) result."""
        run = self._run
        if run is None:  # a stream's: bus.stream() opens it here
            return self._run_unwinding(subject, inject)
        return run(subject, inject)

    async def action(self, action: ActionSubject) -> ActionResult:
        """This route as the innermost call of a modifier stack."""
        if not isinstance(action, ActionSubject):
            raise _not_an_action(self.handler, action)
        direct = self._direct
        if direct is not None and self._ignores_inject:  # fn(subject) is the whole call
            result = _new(ActionResult)
            result.result = await direct(action.subject)
            return result
        inject = action.inject
        if type(inject) is not dict:
            inject = _action_inject(inject, self.handler)
        return ActionResult(await self.invoke(action.subject, inject))

    async def _run_unwinding(self, subject: Any, inject: Dict[str, Any]) -> Any:
        """The route's call with error stages (and a stream's): each stage by its depth."""
        for depth, before in self._enter_steps:
            try:
                before(subject, inject)
            except Exception as error:
                self._unwind(depth, subject, error)
        try:
            result = await self.invoker(subject, inject)
        except Exception as error:  # the handler's, or it binds badly: the hooks that ran see it
            self._unwind(len(self._errors), subject, error)
        for depth, after in self._exit_steps:
            try:
                result = after(subject, result)
            except Exception as error:
                failure = error
                break
        else:
            return result
        self._unwind(depth, subject, failure)  # the layers outside it see the error

    def _unwind(self, depth: int, subject: Any, error: Exception) -> None:
        """Run the error stages of layers ``depth-1 .. 0`` and raise the outcome.

        Each stage runs while the error it is given is the one being handled, as in the
        ``except`` block of a ``try`` written by hand: what it raises has that error for
        its ``__context__`` (not the first error, nor one the awaiting code was handling).
        """
        for hook in reversed(self._errors[:depth]):
            if hook is None:
                continue
            traceback, context = error.__traceback__, error.__context__
            try:
                try:
                    raise error
                except Exception:  # raised only to be the one handled: it is left as it was
                    error.__traceback__, error.__context__ = traceback, context
                    hook(subject, error)
            except Exception as raised:
                error = raised
        context = error.__context__
        try:
            raise error
        finally:  # raised where another error is handled: its own context stays
            error.__context__ = context


def _name_of(fn: Any) -> str:
    """What a coroutine of ``fn`` is called: its qualified name."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _named(function: Any, name: str) -> Any:
    """A copy of the coroutine function ``function`` whose coroutines are called ``name``."""
    copy = FunctionType(function.__code__, function.__globals__, str(name), function.__defaults__, function.__closure__)
    copy.__qualname__ = str(name)
    return copy


def _next_positional(fn: Any) -> Optional[str]:
    """The name of ``fn``'s second parameter when ``fn(subject, value)`` binds exactly as
    ``fn(subject, name=value)`` would (positional-or-keyword, of a plain function), else ``None``.
    """
    function, skip = (fn.__func__, 1) if type(fn) is MethodType else (fn, 0)
    if type(function) is not FunctionType:
        return None
    code = function.__code__
    index = skip + 1
    if code.co_posonlyargcount <= index < code.co_argcount:
        return code.co_varnames[index]
    return None


def _check_layers(*stages: Tuple[Any, ...]) -> None:
    if len({len(stage) for stage in stages if stage}) > 1:
        raise ValueError("hook stages must be aligned: one entry per layer in each")


class PipelineRoute:
    """A registered handler behind a ``ModifierFactory`` stack (the general path)."""

    __slots__ = ("handler", "pipeline", "_stream", "_inline", "_direct", "_pipeline", "_run", "_unwrap")
    _ignores_inject = False
    _kw_names = None
    _kw_all = False
    _kw_exclude = None
    _kw_next = None

    def __init__(self, handler: Any, pipeline: Callable[[ActionSubject], Any]) -> None:
        self.handler = handler
        self.pipeline = pipeline
        # execute reads these of every route: slots (a class attribute is a slower read)
        self._direct = None
        self._run = None
        self._stream = getattr(handler, "kind", None) == "stream"
        # execute runs the stack itself, as invoke would (a stream's it refuses: see execute)
        self._pipeline = None if self._stream else pipeline
        self._inline = getattr(handler, "kind", None) == "sync"
        # The dispatch's coroutine, named after the handler as a Route's is.
        self._unwrap = _named(_unwrap, _name_of(getattr(handler, "fn", handler)))

    def invoke(self, subject: Any, inject: Dict[str, Any]) -> Any:
        """Run the stack; returns a coroutine of the unwrapped result."""
        action = _new(ActionSubject)
        action.subject = subject
        action.inject = inject
        unwrap = self._unwrap  # read as a value: see execute
        return unwrap(self, self.pipeline, action)


async def _unwrap(route: PipelineRoute, pipeline: Callable[[ActionSubject], Any], action: ActionSubject) -> Any:
    """The stack's call, once awaited, as any of a dispatch: its result unwrapped."""
    awaitable = pipeline(action)
    try:
        result = await awaitable
    except TypeError:
        # the stack's own return, not a handler's error (a generator-based coroutine is awaitable)
        if not inspect.isawaitable(awaitable):
            raise _not_awaitable(route, awaitable) from None
        raise
    if type(result) is not ActionResult and not isinstance(result, ActionResult):  # type(): the cheaper call
        raise TypeError(
            f"the modifier stack of {safe_repr(route.handler)} returned {safe_repr(result)}: "
            f"a modifier must return an ActionResult"
        )
    return result.result


def _not_awaitable(route: PipelineRoute, returned: Any) -> TypeError:
    return TypeError(
        f"the modifier stack of {safe_repr(route.handler)} returned {safe_repr(returned)}: "
        f"a modifier layer must return an awaitable of an ActionResult (is it an async def?)"
    )


def _not_an_action(handler: Any, given: Any) -> TypeError:
    return TypeError(
        f"the innermost call of the modifier stack of {safe_repr(handler)} takes an ActionSubject, "
        f"not {safe_repr(given)}"
    )


async def _raise(error: BaseException) -> Any:
    raise error


# A dispatch that can only fail, with no handler to name: a warning if it is never awaited
# names the call, as a coroutine of an ``async def execute`` would.
_raise_unrouted = _named(_raise, "RequestDispatcher.execute")


def _raise_for(route: Any, error: BaseException) -> Any:
    """A dispatch of ``route`` that can only fail: named after its handler (error path only)."""
    invoker = getattr(route, "invoker", None)
    fn = invoker.fn if invoker is not None else getattr(route.handler, "fn", route.handler)
    return _named(_raise, _name_of(fn))(error)


def _stream_misuse(route: Any, obj: Any) -> TypeError:
    return TypeError(f"{safe_repr(route.handler)} answers {type(obj).__name__} with a stream: use bus.stream(request)")


class RequestDispatcher:
    """Engine base of ``LocalRequestBus``: one route per request class.

    ``_routes`` is the lookup table. With ``polymorphic`` it is a cache over
    ``_registered``: a class resolves, on first sight, to the route of the nearest
    class in its MRO; a registration clears the cache.
    """

    def __init__(self, polymorphic: bool = False) -> None:
        self._routes: Dict[Any, Any] = {}
        self._polymorphic = bool(polymorphic)
        self._registered: Dict[Any, Any] = {} if polymorphic else self._routes

    @mark_coroutine_function  # as 0.7's async def execute was (the compiled one: _method.h)
    def execute(self, obj: Any, **inject: Any) -> Any:
        """Dispatch ``obj`` to its handler; returns an awaitable of the result."""
        try:
            route = self._routes[type(obj)]  # cheaper than .get() when the route is there
        except KeyError:
            route = self._resolve(type(obj)) if self._polymorphic else None
            if route is None:
                return _raise_unrouted(self._missing(obj))
        try:
            fn = route._direct  # the handler function, when fn(subject) is the whole call
            if fn is not None:
                if not inject or route._ignores_inject:
                    return fn(obj)
                if len(inject) == 1:  # by position when it is _kw_next: the same binding
                    # A name read off the dict itself: PyPy's JIT finds it in a kwargs dict
                    # at once, where looking up another string costs it a whole dispatch.
                    for name in inject:
                        if name == route._kw_next:
                            return fn(obj, inject[name])
                if (route._kw_names is not None and inject.keys() <= route._kw_names) or (
                    route._kw_all and route._kw_exclude not in inject
                ):
                    return fn(obj, **inject)
            fn = route._run  # the route's whole call: its invoker, or its hooks around it
            if fn is not None:
                return fn(obj, inject)
            fn = route._pipeline  # the stack's outermost layer
            if fn is not None:  # PipelineRoute.invoke, inlined
                action = _new(ActionSubject)
                action.subject = obj
                action.inject = inject
                unwrap = route._unwrap  # read as a value: a slot read as a method is the slow lookup
                return unwrap(route, fn, action)
            return _raise_for(route, _stream_misuse(route, obj))  # neither: a stream's route
        except Exception as error:  # raise at await time, as an async call would
            return _raise_for(route, error)

    def _route_set(self, key: Any, route: Any) -> None:
        self._registered[key] = route
        if self._polymorphic:
            self._routes.clear()

    def _resolve(self, cls: type) -> Any:
        """The route of the nearest class in ``cls.__mro__`` (cached), or ``None``."""
        for base in cls.__mro__:
            route = self._registered.get(base)
            if route is not None:
                self._routes[cls] = route
                return route
        return None

    def _missing(self, obj: Any) -> BaseException:
        return LookupError(f"no handler for {safe_repr(type(obj))}")


# What next(coroutine.__await__(), _DONE) returns once the coroutine has returned: the
# first step of a handler, without the StopIteration that coroutine.send(None) raises
# (and the except clause catching it), which cost more than a whole trivial handler.
_DONE = object()

# Publish strategies the engine runs itself (see mediator.event.strategies).
_BACKGROUND = 0
_CONCURRENT = 1
_SEQUENTIAL = 2
_CUSTOM = 3


class EventDispatcher:
    """Engine base of ``LocalEventBus``: a flat tuple of routes per event class.

    Background runs are supervised here: kept referenced in ``_tasks`` until done,
    their failures sent to ``_on_error``, their count bounded by ``_max_pending``.
    """

    def __init__(self, sync_mode: bool = False, polymorphic: bool = False) -> None:
        # The lookup table; with ``polymorphic``, a cache over ``_registered`` (see _resolve).
        self._groups: Dict[Any, Tuple[Any, ...]] = {}
        self._polymorphic = bool(polymorphic)
        self._registered: Dict[Any, Tuple[Any, ...]] = {} if polymorphic else self._groups
        self._tasks: Dict[Any, Tuple[Any, Any]] = {}
        self._kind = _CONCURRENT if sync_mode else _BACKGROUND
        self._strategy: Any = None  # the strategy object when _kind is _CUSTOM
        self._on_error: Optional[Callable[[BaseException, Any, Any], Any]] = None
        self._max_pending = 0  # 0: unbounded
        self._closed = False
        self._idle: Any = None  # a future drain() waits on, resolved when _tasks empties
        self._slot_waiters: list = []  # futures of publishes waiting for room under _max_pending
        self._bus_cancelled: set = set()  # runs the bus itself cancelled (not a failure)

    @property
    def sync_mode(self) -> bool:
        """Whether ``publish`` awaits its handlers (the ``concurrent`` strategy)."""
        return self._kind == _CONCURRENT

    @sync_mode.setter
    def sync_mode(self, value: bool) -> None:
        self._kind = _CONCURRENT if value else _BACKGROUND

    def _group_add(self, key: Any, route: Any) -> None:
        self._registered[key] = self._registered.get(key, ()) + (route,)
        if self._polymorphic:
            self._groups.clear()

    def _resolve(self, cls: type) -> Tuple[Any, ...]:
        """The routes of every class in ``cls.__mro__``, most specific first.

        A handler already there for a more specific class is not added again for a base.
        """
        routes: list = []
        seen: set = set()
        for base in cls.__mro__:
            added = []
            for route in self._registered.get(base, ()):
                identity = HandlerIdentity(route.handler)
                if identity not in seen:
                    added.append(identity)
                    routes.append(route)
            seen.update(added)
        group = self._groups[cls] = tuple(routes)
        return group

    async def publish(self, obj: Any, **inject: Any) -> None:
        """Run every handler of ``type(obj)`` with the bus's strategy (or ``strategy=``)."""
        if self._closed:
            raise self._closed_error(obj)
        kind, strategy = self._kind, self._strategy
        if "strategy" in inject:
            kind, strategy = self._strategy_for(inject.pop("strategy"))
        group = self._groups.get(type(obj))
        if group is None:
            if not self._polymorphic:
                return
            group = self._resolve(type(obj))
        if not group:
            return
        if kind == _BACKGROUND:
            if self._max_pending:
                await self._spawn_bounded(group, obj, inject)
            else:
                self._spawn(group, obj, inject)
            return
        if kind == _CUSTOM:
            await self._run_custom(strategy, group, obj, inject)
            return
        if kind == _SEQUENTIAL:
            errors = await self._sequential(group, obj, inject)
        else:
            errors = None
            pending = None
            plain = not inject
            for route in group:
                # _start inlined: a method call per handler shows on this path.
                context = copy_context()
                try:
                    direct = route._direct
                    if direct is not None and (plain or route._ignores_inject):
                        coroutine = direct(obj)
                    else:  # its modifiers may change inject: the next handler gets it unchanged
                        coroutine = context.run(route.invoke, obj, dict(inject))
                    if type(coroutine) is CoroutineType:  # see _DONE
                        yielded = context.run(next, coroutine.__await__(), _DONE)
                        if yielded is _DONE:
                            continue
                    else:
                        try:
                            yielded = context.run(coroutine.send, None)
                        except StopIteration:  # it returned (a sync handler's own is its failure)
                            continue
                except (Exception, asyncio.CancelledError) as error:  # a cancellation its own: nothing can cancel a sync step
                    errors = _failed(self, errors, error, obj, route)
                    continue
                except BaseException:  # SystemExit, KeyboardInterrupt...: the publish ends with it
                    _abandon(self, pending, obj, errors)
                    raise
                # It suspended: a task carries it on from where it stopped.
                if pending is None:
                    pending = []
                pending.append((resume_in_task(coroutine, yielded, context), route))
            if pending is not None:
                errors = await _collect(self, pending, obj, errors)
        if errors is not None:
            raise handler_errors(obj, errors)

    def _start(self, route: Any, obj: Any, inject: Dict[str, Any]) -> Any:
        """Start one handler in its own context: ``None`` if it finished, else its task."""
        context = copy_context()
        if route._direct is not None and (not inject or route._ignores_inject):
            coroutine = route._direct(obj)
        else:
            coroutine = context.run(route.invoke, obj, dict(inject))
        if type(coroutine) is CoroutineType:  # see _DONE
            yielded = context.run(next, coroutine.__await__(), _DONE)
            if yielded is _DONE:
                return None
        else:
            try:
                yielded = context.run(coroutine.send, None)
            except StopIteration:
                return None
        return resume_in_task(coroutine, yielded, context)

    async def _sequential(self, group: Tuple[Any, ...], obj: Any, inject: Dict[str, Any]) -> Optional[list]:
        """Each handler in turn, the next once the previous has finished."""
        errors = None
        for route in group:
            try:
                task = self._start(route, obj, inject)
            except (Exception, asyncio.CancelledError) as error:  # a cancellation its own: nothing can cancel a sync step
                errors = _failed(self, errors, error, obj, route)
                continue
            except BaseException:  # SystemExit, KeyboardInterrupt...: the publish ends with it
                _abandon(self, None, obj, errors)
                raise
            if task is not None:
                errors = await _collect(self, [(task, route)], obj, errors)
        return errors

    def _spawn(self, group: Tuple[Any, ...], obj: Any, inject: Dict[str, Any]) -> None:
        create_task = asyncio.get_running_loop().create_task
        tasks = self._tasks
        for route in group:
            try:
                if route._inline:  # a sync handler runs here; only if it suspends is there a task
                    task = self._start(route, obj, inject)
                    if task is None:
                        continue
                elif route._direct is not None and (not inject or route._ignores_inject):
                    task = create_task(route._direct(obj))
                else:
                    task = create_task(route.invoke(obj, dict(inject)))
            except (Exception, asyncio.CancelledError) as error:  # a sync handler's own cancellation: reported
                self._handler_failed(error, obj, route)
                continue
            tasks[task] = (obj, route)
            task.add_done_callback(self._task_done)

    async def _spawn_bounded(self, group: Tuple[Any, ...], obj: Any, inject: Dict[str, Any]) -> None:
        """``_spawn`` once there is room for the event's handlers under ``_max_pending``.

        An event with more handlers than ``_max_pending`` waits for an empty bus. A publish
        from one of the bus's own background runs does not wait: that run holds a place
        already, and waiting for itself to finish would never end.
        """
        if asyncio.current_task() not in self._tasks:
            # Room for all of the event's handlers at once: it is started whole or refused.
            room = self._max_pending - min(len(group), self._max_pending)
            queued_at = len(self._slot_waiters)
            while len(self._tasks) > room:
                waiter = asyncio.get_running_loop().create_future()
                self._slot_waiters.insert(queued_at, waiter)
                queued_at = 0  # woken too early: wait again at the front
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake_slot_waiter()  # pass on the room it was given
                    raise
                finally:
                    if waiter in self._slot_waiters:
                        self._slot_waiters.remove(waiter)
                if self._closed:
                    raise self._closed_error(obj)
        self._spawn(group, obj, inject)
        if self._slot_waiters and len(self._tasks) < self._max_pending:
            # room left (its handlers finished at once, or failed to start): pass it on, as
            # only a run finishing wakes a waiter otherwise, and the next would wait forever
            self._wake_slot_waiter()

    def _wake_slot_waiters(self) -> None:
        """Wake every publish waiting for room (the bus is closing: they will find it closed)."""
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _cancel_run(self, task: "asyncio.Task[Any]") -> None:
        """Cancel a background run on the bus's own account: not reported as a failure."""
        if not task.done():
            self._bus_cancelled.add(task)
            task.cancel()

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        obj, route = self._tasks.pop(task)
        error = _outcome(task, self._bus_cancelled)
        if error is not None:
            self._handler_failed(error, obj, route)
        if self._slot_waiters:
            self._wake_slot_waiter()
        if not self._tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _handler_failed(self, error: BaseException, obj: Any, route: Any) -> None:
        """A background failure: to the error hook; logged if there is none, or if it fails."""
        if self._on_error is not None:
            try:
                self._on_error(error, obj, route.handler)
                return
            except Exception as hook_error:
                logger.error("the on_error hook failed on %r", SafeRepr(obj), exc_info=hook_error)
        log_handler_error(error, obj, route.handler)

    def _strategy_for(self, value: Any) -> Tuple[int, Any]:
        raise TypeError(f"publish strategies are not supported by {type(self).__name__}")

    async def _run_custom(self, strategy: Any, group: Tuple[Any, ...], obj: Any, inject: Dict[str, Any]) -> None:
        raise TypeError(f"custom strategies are not supported by {type(self).__name__}")

    def _closed_error(self, obj: Any) -> BaseException:
        return RuntimeError(f"{type(self).__name__} is closed: cannot publish {safe_repr(obj)}")


def log_handler_error(error: BaseException, event: Any, handler: Any) -> None:
    """The default error hook: log the failure with its traceback on the ``mediator`` logger."""
    logger.error(
        "event handler %r failed on %r",
        SafeRepr(handler),
        SafeRepr(event),
        exc_info=(type(error), error, error.__traceback__),
    )


def _outcome(task: "asyncio.Task[Any]", bus_cancelled: set) -> Optional[BaseException]:
    """The failure a finished run ended with: its exception, or its own cancellation."""
    if not task.cancelled():
        return task.exception()
    if task in bus_cancelled:
        bus_cancelled.discard(task)
        return None
    try:
        task.result()
    except asyncio.CancelledError as cancelled:
        return cancelled
    return None  # pragma: no cover - a cancelled task always raises


async def _collect(dispatcher: EventDispatcher, pending: list, obj: Any, errors: Optional[list]) -> Optional[list]:
    """Wait for the suspended handlers of one publish; their failures join ``errors``.

    A handler that ended cancelled on its own goes to the bus's failure report (an
    exception group holds no cancellation). If the publish itself is cancelled, its
    handlers are cancelled too, and nothing is lost: failures already seen, and any
    still to come, go to the failure report.
    """
    try:
        await asyncio.wait([task for task, _ in pending])
    except BaseException:
        _abandon(dispatcher, pending, obj, errors)
        raise
    for task, route in pending:
        error = _outcome(task, dispatcher._bus_cancelled)
        if error is not None:
            errors = _failed(dispatcher, errors, error, obj, route)
    return errors


def _abandon(dispatcher: EventDispatcher, pending: Optional[list], obj: Any, errors: Optional[list]) -> None:
    """A publish ending early (cancelled, or a handler's SystemExit, KeyboardInterrupt...):
    its failures so far go to the bus's failure report, its suspended runs become the bus's
    background runs, cancelled, so none is left unsupervised and no failure is lost."""
    for failure, route in errors or ():
        dispatcher._handler_failed(failure, obj, route)
    for task, route in pending or ():
        dispatcher._tasks[task] = (obj, route)
        task.add_done_callback(dispatcher._task_done)
        dispatcher._cancel_run(task)


def _failed(
    dispatcher: EventDispatcher, errors: Optional[list], error: BaseException, obj: Any, route: Any
) -> Optional[list]:
    """Record a handler's failure: an ``Exception`` joins the event's group, with a note naming
    the handler and the event; a cancellation of its own, which no group holds, is reported."""
    if not isinstance(error, Exception):
        dispatcher._handler_failed(error, obj, route)
        return errors
    add_note(error, f"raised by event handler {safe_repr(route.handler)} for {safe_repr(obj)}")
    if errors is None:
        errors = []
    errors.append((error, route))
    return errors
