"""The handler stores: a collection, a one-per-key mapping, and a modifier layer."""

from typing import Dict, Hashable, Iterable, Iterator, List, Sequence

from mediator._safe import safe_repr
from mediator.common.handler import describe
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry.base import (
    CollisionHandlerStoreError,
    HandlerEntry,
    HandlerStore,
    LookupHandlerStoreError,
)

__all__ = ["CollectionHandlerStore", "MappingHandlerStore", "ModifierHandlerStore"]


class CollectionHandlerStore(HandlerStore):
    """Keeps every entry, in the order added."""

    def __init__(self) -> None:
        self._entries: List[HandlerEntry] = []

    def add(self, entry: HandlerEntry) -> None:
        self._entries.append(entry)

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def __iter__(self) -> Iterator[HandlerEntry]:
        return iter(list(self._entries))


class MappingHandlerStore(HandlerStore):
    """Keeps one entry per key."""

    def __init__(self) -> None:
        self._map: Dict[Hashable, HandlerEntry] = {}

    def add(self, entry: HandlerEntry) -> None:
        """Add ``entry``; ``CollisionHandlerStoreError`` if its key already has one."""
        key = entry.key
        existing = self._map.get(key)
        if existing is not None:
            raise CollisionHandlerStoreError(
                f"{describe(key)} already has a handler ({safe_repr(existing.handler)}); "
                f"cannot add {safe_repr(entry.handler)}"
            )
        self._map[key] = entry

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def __iter__(self) -> Iterator[HandlerEntry]:
        return iter(list(self._map.values()))

    def get(self, key: Hashable) -> HandlerEntry:
        """The entry for ``key``; ``LookupHandlerStoreError`` if there is none."""
        entry = self._map.get(key)
        if entry is None:
            raise LookupHandlerStoreError(f"no handler registered for {describe(key)}")
        return entry


class ModifierHandlerStore(HandlerStore):
    """Puts its modifiers on every entry added, outside the entry's own, then stores it."""

    def __init__(self, nested: HandlerStore, modifiers: Sequence[ModifierFactory]) -> None:
        self._nested = nested
        self._modifiers = tuple(modifiers)

    def add(self, entry: HandlerEntry) -> None:
        self._nested.add(entry.stack(self._modifiers))

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def __iter__(self) -> Iterator[HandlerEntry]:
        return iter(self._nested)

    @classmethod
    def wrap(cls, nested: HandlerStore, modifiers: Sequence[ModifierFactory]) -> HandlerStore:
        """``nested`` behind a modifier layer, or ``nested`` itself when there are no modifiers."""
        return cls(nested, modifiers) if modifiers else nested
