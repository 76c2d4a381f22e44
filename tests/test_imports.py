"""Every name of the 0.7 public API (COMPAT.md, "Import paths and names") is importable where it was."""

import importlib

import pytest

PUBLIC_NAMES = {
    "mediator.request": ["LocalRequestBus", "RequestHandlerRegistry", "RequestExecutor"],
    "mediator.event": [
        "LocalEventBus",
        "EventHandlerRegistry",
        "EventPublish",
        "EventPublisher",
        "EventSubscriber",
        "EventAggregate",
        "EventAggregateError",
        "ConfigEventAggregateError",
    ],
    "mediator.common.factory": [
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
    ],
    "mediator.common.handler": ["Handler", "HandlerInfo", "CallableHandler"],
    "mediator.common.modifiers": ["ModifierFactory", "ModifierStack", "Hook"],
    "mediator.common.types": ["ActionSubject", "ActionResult", "ActionCallType"],
    "mediator.common.registry": [
        "HandlerEntry",
        "HandlerStore",
        "CollectionHandlerStore",
        "MappingHandlerStore",
        "ModifierHandlerStore",
        "HandlerRegistry",
        "HandlerStoreError",
        "InspectionHandlerStoreError",
        "CollisionHandlerStoreError",
        "LookupHandlerStoreError",
    ],
    "mediator": ["Hook", "ModifierFactory", "LocalEventBus", "LocalRequestBus", "COMPILED"],
}

PAIRS = [(module, name) for module, names in PUBLIC_NAMES.items() for name in names]


@pytest.mark.parametrize("module, name", PAIRS, ids=[f"{m}.{n}" for m, n in PAIRS])
def test_name_importable(module, name):
    """``from <module> import <name>`` works, and a star import brings the name too."""
    mod = importlib.import_module(module)
    assert getattr(mod, name, None) is not None, f"{module} has no {name}"
    namespace = {}
    exec(f"from {module} import *", namespace)
    assert name in namespace, f"'from {module} import *' does not bring {name}"


@pytest.mark.parametrize(
    "module, name, other_module",
    [
        ("mediator", "Hook", "mediator.common.modifiers"),
        ("mediator", "ModifierFactory", "mediator.common.modifiers"),
        ("mediator", "LocalRequestBus", "mediator.request"),
        ("mediator", "LocalEventBus", "mediator.event"),
        ("mediator.event", "LocalEventBus", "mediator.event.local"),
    ],
)
def test_reexports_are_the_same_object(module, name, other_module):
    """A name re-exported from another module is that module's object, not a copy."""
    assert getattr(importlib.import_module(module), name) is getattr(importlib.import_module(other_module), name)


# Code written for 0.7 catches these errors by their built-in base classes.
ERROR_BASES = [
    ("mediator.common.factory", "IncompatibleHandlerFactoryError", TypeError),
    ("mediator.common.factory", "IncompatibleHandlerFactoryError", "HandlerFactoryError"),
    ("mediator.common.factory", "ConfigHandlerFactoryCascadeError", ValueError),
    ("mediator.common.factory", "ConfigHandlerFactoryCascadeError", "HandlerFactoryCascadeError"),
    ("mediator.common.factory", "IncompatibleHandlerFactoryCascadeError", "HandlerFactoryCascadeError"),
    ("mediator.common.factory", "InspectionHandlerFactoryCascadeError", "HandlerFactoryCascadeError"),
    ("mediator.common.registry", "CollisionHandlerStoreError", KeyError),
    ("mediator.common.registry", "CollisionHandlerStoreError", "HandlerStoreError"),
    ("mediator.common.registry", "LookupHandlerStoreError", LookupError),
    ("mediator.common.registry", "LookupHandlerStoreError", "HandlerStoreError"),
    ("mediator.common.registry", "InspectionHandlerStoreError", "HandlerStoreError"),
    ("mediator.event", "ConfigEventAggregateError", AssertionError),
    ("mediator.event", "ConfigEventAggregateError", "EventAggregateError"),
]


@pytest.mark.parametrize("module, name, base", ERROR_BASES)
def test_error_hierarchy(module, name, base):
    mod = importlib.import_module(module)
    if isinstance(base, str):
        base = getattr(mod, base)
    assert issubclass(getattr(mod, name), base)


def test_inspection_errors_are_not_type_errors():
    """An inspection error must not be mistaken for 'incompatible' by ``except TypeError``."""
    from mediator.common.factory import HandlerFactoryError, InspectionHandlerFactoryCascadeError

    assert not issubclass(HandlerFactoryError, TypeError)
    assert not issubclass(InspectionHandlerFactoryCascadeError, TypeError)


@pytest.mark.parametrize(
    "module, name",
    [
        ("mediator.common.registry", "HandlerStore"),
        ("mediator.common.registry", "HandlerRegistry"),
        ("mediator.common.registry", "CollectionHandlerStore"),
        ("mediator.common.registry", "MappingHandlerStore"),
        ("mediator.common.registry", "ModifierHandlerStore"),
        ("mediator.event", "EventSubscriber"),
    ],
)
def test_stores_share_the_store_interface(module, name):
    from mediator.common.registry import HandlerStore

    assert issubclass(getattr(importlib.import_module(module), name), HandlerStore)


def test_buses_are_registries_and_executors():
    from mediator.common.registry import HandlerRegistry
    from mediator.event import EventHandlerRegistry, EventPublisher, EventSubscriber, LocalEventBus
    from mediator.request import LocalRequestBus, RequestExecutor, RequestHandlerRegistry

    assert issubclass(LocalRequestBus, HandlerRegistry) and issubclass(LocalRequestBus, RequestExecutor)
    assert issubclass(LocalEventBus, HandlerRegistry) and issubclass(LocalEventBus, EventPublisher)
    assert issubclass(LocalEventBus, EventSubscriber)
    assert issubclass(RequestHandlerRegistry, HandlerRegistry) and issubclass(EventHandlerRegistry, HandlerRegistry)


def test_policy_type_covers_the_policies():
    import typing

    from mediator.common.factory import CallableHandlerPolicy, MappablePolicy, MethodHandlerPolicy, PolicyType

    assert set(typing.get_args(PolicyType)) >= {CallableHandlerPolicy, MethodHandlerPolicy, MappablePolicy}
