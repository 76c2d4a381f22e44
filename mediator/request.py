"""Commands and queries: each request class has exactly one handler."""

from typing import TYPE_CHECKING, Any, Coroutine, Dict, Generic, Optional, Sequence, Tuple, TypeVar, overload

from mediator._engine import RequestDispatcher
from mediator._safe import safe_repr
from mediator.common.factory import CallableHandlerPolicy, HandlerFactoryCascade, PolicyType
from mediator.common.handler import describe
from mediator.common.introspection import HandlerIntrospection
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import HandlerEntry, HandlerRegistry, LookupHandlerStoreError, MappingHandlerStore
from mediator.common.routes import compile_route
from mediator.stream import Stream

__all__ = ["RequestExecutor", "LocalRequestBus", "RequestHandlerRegistry", "Request"]

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class Request(Generic[R]):
    """Marks a request class with its result type: ``class GetUser(Request[User])``.

    ``await bus.execute(GetUser(...))`` is then typed ``User`` (and ``bus.stream`` of it
    yields ``User``) under mypy and pyright. It adds nothing at run time.
    """

    __slots__ = ()


class RequestExecutor:
    """Something that executes requests."""

    async def execute(self, obj: Any, **kwargs: Any) -> Any:
        """Execute the request ``obj``; ``kwargs`` are injected into its handler."""
        raise NotImplementedError


class RequestHandlerRegistry(HandlerRegistry):
    """A registry of request handlers (one per class), to ``include`` into a bus."""

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
    ) -> None:
        super().__init__(MappingHandlerStore(), policies or [CallableHandlerPolicy()], cascade, modifiers)


class _RouteStore(MappingHandlerStore):
    """Keeps one entry per request class and compiles it into the bus's dispatch table."""

    def __init__(self, dispatcher: RequestDispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher

    def add(self, entry: HandlerEntry) -> None:
        route = compile_route(entry)
        super().add(entry)
        self._dispatcher._route_set(entry.key, route)


class LocalRequestBus(RequestDispatcher, HandlerRegistry, RequestExecutor, HandlerIntrospection):
    """Executes each request with its one handler, in the caller's task.

    ``await bus.execute(request, **kwargs)`` returns the handler's result; it raises
    ``LookupHandlerStoreError`` (when awaited) if the request's class has no handler.
    ``bus.stream(request, **kwargs)`` iterates what an async-generator handler yields.
    With ``polymorphic=True`` a request without a handler of its own goes to the
    handler of the nearest base class.
    """

    if TYPE_CHECKING:

        @overload
        def execute(self, obj: Request[T], **kwargs: Any) -> Coroutine[Any, Any, T]: ...

        @overload
        def execute(self, obj: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

        def execute(self, obj: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
        *,
        polymorphic: bool = False,
    ) -> None:
        RequestDispatcher.__init__(self, polymorphic)
        HandlerRegistry.__init__(self, _RouteStore(self), policies or [CallableHandlerPolicy()], cascade, modifiers)

    @overload
    def stream(self, obj: Request[T], **kwargs: Any) -> Stream[T]: ...

    @overload
    def stream(self, obj: Any, **kwargs: Any) -> Stream[Any]: ...

    def stream(self, obj: Any, **kwargs: Any) -> Stream[Any]:
        """Iterate what the request's async-generator handler yields (errors when iterated)."""
        route = self._route_of(type(obj))
        if route is None:
            error = self._missing(obj)
            return Stream(lambda: _raise(error))
        if not route._stream and not route._inline:
            misuse = TypeError(f"{safe_repr(route.handler)} is not a stream handler (async generator): use bus.execute(request)")
            return Stream(lambda: _raise(misuse))
        return Stream(lambda: _open(route, obj, kwargs))

    def _route_of(self, cls: type) -> Any:
        route = self._routes.get(cls)
        if route is None and self._polymorphic:
            route = self._resolve(cls)
        return route

    def _routes_of(self, cls: type) -> Tuple[Any, ...]:
        route = self._route_of(cls)
        return () if route is None else (route,)

    def _missing(self, obj: Any) -> LookupHandlerStoreError:
        return LookupHandlerStoreError(f"no handler registered for {describe(type(obj))} (request {safe_repr(obj)})")


async def _raise(error: BaseException) -> Any:
    raise error


async def _open(route: Any, obj: Any, kwargs: Dict[str, Any]) -> Any:
    """Start a stream handler; a plain def must have returned an async iterator."""
    iterator = await route.invoke(obj, kwargs)
    if not hasattr(type(iterator), "__anext__"):
        raise TypeError(f"{safe_repr(route.handler)} returned {safe_repr(iterator)}, not an async iterator: use bus.execute(request)")
    return iterator
