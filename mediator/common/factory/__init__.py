"""Handler inspection: policies, the factories that follow them, and their cascade."""

from mediator.common.factory.base import (
    HandlerFactory,
    HandlerFactoryError,
    HandlerFactoryMapper,
    IncompatibleHandlerFactoryError,
)
from mediator.common.factory.cascade import (
    ConfigHandlerFactoryCascadeError,
    HandlerFactoryCascade,
    HandlerFactoryCascadeError,
    IncompatibleHandlerFactoryCascadeError,
    InspectionHandlerFactoryCascadeError,
)
from mediator.common.factory.factories import (
    CallableHandlerFactory,
    DefaultHandlerFactoryMapper,
    MethodHandlerFactory,
    TypeHandlerFactoryMapper,
)
from mediator.common.factory.policies import CallableHandlerPolicy, MappablePolicy, MethodHandlerPolicy, PolicyType

__all__ = [
    "CallableHandlerPolicy",
    "MethodHandlerPolicy",
    "MappablePolicy",
    "PolicyType",
    "HandlerFactory",
    "HandlerFactoryMapper",
    "HandlerFactoryError",
    "IncompatibleHandlerFactoryError",
    "CallableHandlerFactory",
    "MethodHandlerFactory",
    "TypeHandlerFactoryMapper",
    "DefaultHandlerFactoryMapper",
    "HandlerFactoryCascade",
    "HandlerFactoryCascadeError",
    "ConfigHandlerFactoryCascadeError",
    "IncompatibleHandlerFactoryCascadeError",
    "InspectionHandlerFactoryCascadeError",
]
