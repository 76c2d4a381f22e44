"""The two built-in handler factories and the mappers from policies to factories."""

from typing import Any, Callable, Dict, Mapping, Optional, Type

from mediator._safe import safe_repr
from mediator.common.factory.base import HandlerFactory, HandlerFactoryMapper, IncompatibleHandlerFactoryError
from mediator.common.factory.inspection import HandlerLabel, inspect_callable
from mediator.common.factory.policies import CallableHandlerPolicy, MethodHandlerPolicy
from mediator.common.handler import Handler

__all__ = [
    "CallableHandlerFactory",
    "MethodHandlerFactory",
    "TypeHandlerFactoryMapper",
    "DefaultHandlerFactoryMapper",
]


class CallableHandlerFactory(HandlerFactory):
    """Makes a handler of an async callable, following a ``CallableHandlerPolicy``."""

    def __init__(self, policy: CallableHandlerPolicy) -> None:
        self.policy = policy

    def create(self, obj: Any) -> Handler:
        return inspect_callable(obj, obj, self.policy, HandlerLabel(obj))

    def __repr__(self) -> str:
        return f"CallableHandlerFactory({self.policy!r})"


class MethodHandlerFactory(HandlerFactory):
    """Makes a handler of an object's attribute, following a ``MethodHandlerPolicy``."""

    def __init__(self, policy: MethodHandlerPolicy) -> None:
        self.policy = policy
        self._subtype_of = tuple(policy.subtype_of)

    def create(self, obj: Any) -> Handler:
        name = self.policy.name
        if self._subtype_of and not isinstance(obj, self._subtype_of):
            expected = ", ".join(cls.__qualname__ for cls in self._subtype_of)
            raise IncompatibleHandlerFactoryError(f"{safe_repr(obj)} is not an instance of {expected}")
        try:
            attribute = getattr(obj, name)
        except AttributeError:
            raise IncompatibleHandlerFactoryError(f"{safe_repr(obj)} has no attribute {name!r}") from None
        return inspect_callable(obj, attribute, self.policy.policy, HandlerLabel(obj, name))

    def __repr__(self) -> str:
        return f"MethodHandlerFactory({self.policy!r})"


FactoryProvider = Callable[[Any], HandlerFactory]


class TypeHandlerFactoryMapper(HandlerFactoryMapper):
    """Maps a policy to a factory by the policy's class (or its nearest mapped base)."""

    def __init__(self, mapping: Mapping[Type[Any], FactoryProvider]) -> None:
        self._mapping = dict(mapping)

    def map(self, policy: Any) -> HandlerFactory:
        for cls in type(policy).__mro__:
            provider = self._mapping.get(cls)
            if provider is not None:
                return provider(policy)
        known = ", ".join(cls.__qualname__ for cls in self._mapping)
        raise TypeError(f"no handler factory for policy {safe_repr(policy)}: mapped policy types are {known}")


class DefaultHandlerFactoryMapper(TypeHandlerFactoryMapper):
    """The built-in policies, plus ``extra_mapping`` (which may override them)."""

    def __init__(self, extra_mapping: Optional[Mapping[Type[Any], FactoryProvider]] = None) -> None:
        super().__init__({**self.default_mapping(), **(extra_mapping or {})})

    @classmethod
    def default_mapping(cls) -> Dict[Type[Any], FactoryProvider]:
        return {CallableHandlerPolicy: CallableHandlerFactory, MethodHandlerPolicy: MethodHandlerFactory}
