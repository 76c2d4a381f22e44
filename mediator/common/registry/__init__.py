"""Handler entries, stores and the registry."""

from mediator.common.registry.base import (
    CollisionHandlerStoreError,
    HandlerEntry,
    HandlerStore,
    HandlerStoreError,
    InspectionHandlerStoreError,
    LookupHandlerStoreError,
)
from mediator.common.registry.registry import HandlerRegistry
from mediator.common.registry.stores import CollectionHandlerStore, MappingHandlerStore, ModifierHandlerStore

__all__ = [
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
]
