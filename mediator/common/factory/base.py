"""Handler factory interfaces and their errors."""

from typing import Any, Iterable, List

from mediator.common.handler import Handler

__all__ = ["HandlerFactoryError", "IncompatibleHandlerFactoryError", "HandlerFactory", "HandlerFactoryMapper"]


class HandlerFactoryError(Exception):
    """The object fits the factory but cannot be made into a handler (an inspection error)."""


class IncompatibleHandlerFactoryError(TypeError, HandlerFactoryError):
    """The object does not fit this factory; a cascade tries the next one."""


class HandlerFactory:
    """Makes a ``Handler`` from a registered object."""

    def create(self, obj: Any) -> Handler:
        raise NotImplementedError(f"{type(self).__qualname__} must implement create(obj)")


class HandlerFactoryMapper:
    """Maps policies (recipes) to the handler factories that follow them."""

    def map_all(self, policies: Iterable[Any]) -> List[HandlerFactory]:
        return [self.map(policy) for policy in policies]

    def map(self, policy: Any) -> HandlerFactory:
        raise NotImplementedError(f"{type(self).__qualname__} must implement map(policy)")
