"""A cascade of handler factories, tried in order."""

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from mediator._safe import safe_repr
from mediator.common.factory.base import (
    HandlerFactory,
    HandlerFactoryError,
    HandlerFactoryMapper,
    IncompatibleHandlerFactoryError,
)
from mediator.common.factory.factories import DefaultHandlerFactoryMapper
from mediator.common.factory.policies import PolicyType
from mediator.common.handler import Handler

__all__ = [
    "HandlerFactoryCascade",
    "HandlerFactoryCascadeError",
    "ConfigHandlerFactoryCascadeError",
    "InspectionHandlerFactoryCascadeError",
    "IncompatibleHandlerFactoryCascadeError",
]


class HandlerFactoryCascadeError(Exception):
    """Base of the cascade's errors."""


class ConfigHandlerFactoryCascadeError(ValueError, HandlerFactoryCascadeError):
    """The cascade is misconfigured (no policies)."""


class InspectionHandlerFactoryCascadeError(HandlerFactoryCascadeError):
    """A factory accepted the object but found it wrong; ``factory`` is that factory."""

    def __init__(self, *args: Any, factory: HandlerFactory) -> None:
        super().__init__(*args)
        self.factory = factory


class IncompatibleHandlerFactoryCascadeError(HandlerFactoryCascadeError):
    """No factory fits the object; ``factory_errors`` holds each ``(factory, error)``."""

    def __init__(
        self, *args: Any, factory_errors: Sequence[Tuple[HandlerFactory, IncompatibleHandlerFactoryError]]
    ) -> None:
        super().__init__(*args)
        self.factory_errors = factory_errors


class HandlerFactoryCascade:
    """Turns an object into a handler with the first factory that fits it."""

    def __init__(self, policies: Iterable[PolicyType], mapper: Optional[HandlerFactoryMapper] = None) -> None:
        policies = list(policies)
        if not policies:
            raise ConfigHandlerFactoryCascadeError("HandlerFactoryCascade needs at least one policy")
        self._mapper = mapper if mapper is not None else DefaultHandlerFactoryMapper()
        self._factories = self._mapper.map_all(policies)

    def __call__(self, obj: Any) -> Handler:
        factory_errors: List[Tuple[HandlerFactory, IncompatibleHandlerFactoryError]] = []
        for factory in self._factories:
            try:
                return factory.create(obj)
            except IncompatibleHandlerFactoryError as error:
                factory_errors.append((factory, error))
            except HandlerFactoryError as error:
                raise InspectionHandlerFactoryCascadeError(str(error), factory=factory) from error
        reasons = "; ".join(str(error) for _, error in factory_errors)
        raise IncompatibleHandlerFactoryCascadeError(
            f"{safe_repr(obj)} cannot be a handler: {reasons}", factory_errors=factory_errors
        )

    def replace(self, policies: Iterable[PolicyType]) -> "HandlerFactoryCascade":
        """A cascade of other policies with the same mapper."""
        return HandlerFactoryCascade(policies, mapper=self._mapper)
