"""Commands and queries: each request class has exactly one handler."""

from typing import Any, Optional, Sequence

from mediator._engine import RequestDispatcher
from mediator.common.factory import CallableHandlerPolicy, HandlerFactoryCascade, PolicyType
from mediator.common.handler import describe
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import HandlerEntry, HandlerRegistry, LookupHandlerStoreError, MappingHandlerStore
from mediator.common.routes import compile_route

__all__ = ["RequestExecutor", "LocalRequestBus", "RequestHandlerRegistry"]


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


class LocalRequestBus(RequestDispatcher, HandlerRegistry, RequestExecutor):
    """Executes each request with its one handler, in the caller's task.

    ``await bus.execute(request, **kwargs)`` returns the handler's result; it raises
    ``LookupHandlerStoreError`` (when awaited) if the request's class has no handler.
    """

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

    def _missing(self, obj: Any) -> LookupHandlerStoreError:
        return LookupHandlerStoreError(f"no handler registered for {describe(type(obj))} (request {obj!r})")
