"""Asking a bus what serves what, and checking it at start-up."""

from typing import Any, Dict, Iterable, List, Tuple

from mediator._safe import safe_repr
from mediator.common.handler import Handler, describe
from mediator.common.registry.base import LookupHandlerStoreError

__all__ = ["HandlerIntrospection", "MissingHandlersError"]


class MissingHandlersError(LookupHandlerStoreError):
    """Some classes have no handler; ``classes`` lists every one of them."""

    def __init__(self, classes: List[type]) -> None:
        names = ", ".join(describe(cls) for cls in classes)
        super().__init__(f"{len(classes)} class(es) have no handler: {names}")
        self.classes = classes


class HandlerIntrospection:
    """``handlers_for``, ``registered`` and ``check_handlers``, over a dispatcher's tables."""

    _registered: Dict[Any, Any]

    def _routes_of(self, cls: type) -> Tuple[Any, ...]:
        raise NotImplementedError

    def handlers_for(self, cls: type) -> Tuple[Handler, ...]:
        """The handlers that serve instances of ``cls``, as dispatch would pick them."""
        if not isinstance(cls, type):
            raise TypeError(f"handlers_for() takes a class, got {safe_repr(cls)}")
        return tuple(route.handler for route in self._routes_of(cls))

    def registered(self) -> Dict[type, Tuple[Handler, ...]]:
        """Every registered class and its handlers, in registration order."""
        return {cls: tuple(route.handler for route in _as_tuple(routes)) for cls, routes in self._registered.items()}

    def check_handlers(self, classes: Iterable[type]) -> None:
        """Raise ``MissingHandlersError`` listing every class of ``classes`` that has no handler."""
        missing = [cls for cls in classes if not self.handlers_for(cls)]
        if missing:
            raise MissingHandlersError(missing)


def _as_tuple(routes: Any) -> Tuple[Any, ...]:
    return routes if isinstance(routes, tuple) else (routes,)
