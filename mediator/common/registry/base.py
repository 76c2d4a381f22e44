"""Handler entries, the store interface and the store errors."""

from dataclasses import dataclass
from typing import Hashable, Iterable, Iterator, Sequence

from mediator.common.handler import Handler
from mediator.common.modifiers import ModifierFactory, ModifierStack
from mediator.common.types import ActionCallType

__all__ = [
    "HandlerEntry",
    "HandlerStore",
    "HandlerStoreError",
    "InspectionHandlerStoreError",
    "CollisionHandlerStoreError",
    "LookupHandlerStoreError",
]


@dataclass
class HandlerEntry:
    """A handler with its modifiers (outermost first)."""

    handler: Handler
    modifiers: Sequence[ModifierFactory] = ()

    @property
    def key(self) -> Hashable:
        """The handler's key: the subject class it serves."""
        return self.handler.key

    def handler_pipeline(self) -> ActionCallType:
        """The handler wrapped in this entry's modifiers."""
        return self.pipeline(self.handler)

    def pipeline(self, call: ActionCallType) -> ActionCallType:
        """``call`` wrapped in this entry's modifiers."""
        return ModifierStack.build(self.modifiers, call)

    def stack(self, modifiers: Sequence[ModifierFactory]) -> "HandlerEntry":
        """A new entry with ``modifiers`` outside this entry's own."""
        return HandlerEntry(handler=self.handler, modifiers=(*modifiers, *self.modifiers))


class HandlerStoreError(Exception):
    """Base of the handler store errors."""


class InspectionHandlerStoreError(HandlerStoreError):
    """A store could not inspect what it was given."""


class CollisionHandlerStoreError(KeyError, HandlerStoreError):
    """A store that keeps one handler per key was given a second one."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class LookupHandlerStoreError(LookupError, HandlerStoreError):
    """No handler is registered for the key."""


class HandlerStore:
    """Where handler entries are kept."""

    def add(self, entry: HandlerEntry) -> None:
        raise NotImplementedError

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[HandlerEntry]:
        raise NotImplementedError

    def restack(self, modifiers: Sequence[ModifierFactory]) -> None:
        """Put ``modifiers`` outside the modifiers of every entry held (``add_modifiers``)."""
        raise NotImplementedError(f"{type(self).__qualname__} cannot take modifiers after the fact")
