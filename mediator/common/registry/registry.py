"""``HandlerRegistry``: registers objects as handlers into a store."""

from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar, overload

from mediator._safe import safe_repr
from mediator.common.factory import HandlerFactoryCascade, PolicyType
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry.base import HandlerEntry, HandlerStore
from mediator.common.registry.stores import ModifierHandlerStore

__all__ = ["HandlerRegistry", "check_modifiers"]

T = TypeVar("T")


class HandlerRegistry(HandlerStore):
    """Inspects objects into handlers (through a policy cascade) and stores them.

    Give ``policies`` or a ready ``cascade``; ``modifiers`` go on every handler added.
    """

    def __init__(
        self,
        store: HandlerStore,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
    ) -> None:
        if cascade is not None:
            self._cascade = cascade
        elif policies is not None:
            self._cascade = HandlerFactoryCascade(policies)
        else:
            raise TypeError(f"{type(self).__name__} needs policies or a cascade")
        self._store = ModifierHandlerStore.wrap(store, check_modifiers(modifiers, self))

    @overload
    def register(
        self, obj: None = None, *, policies: Optional[Sequence[PolicyType]] = None, modifiers: Sequence[ModifierFactory] = ()
    ) -> Callable[[T], T]: ...

    @overload
    def register(
        self, obj: T, *, policies: Optional[Sequence[PolicyType]] = None, modifiers: Sequence[ModifierFactory] = ()
    ) -> T: ...

    def register(
        self,
        obj: Any = None,
        *,
        policies: Optional[Sequence[PolicyType]] = None,
        modifiers: Sequence[ModifierFactory] = (),
    ) -> Any:
        """Register ``obj`` as a handler and return it; without ``obj``, a decorator that does.

        ``policies`` replaces the cascade's policies for this object only; ``modifiers``
        wrap this handler only (inside the registry's and the bus's).
        """
        cascade = self._cascade if policies is None else self._cascade.replace(policies)
        modifiers = check_modifiers(modifiers, obj if obj is not None else "register()")

        def register(target: Any) -> Any:
            self.add(HandlerEntry(handler=cascade(target), modifiers=modifiers))
            return target

        return register if obj is None else register(obj)

    def add(self, entry: HandlerEntry) -> None:
        self._store.add(entry)

    def include(self, entries: Iterable[HandlerEntry]) -> None:
        self._store.include(entries)

    def __iter__(self) -> Iterator[HandlerEntry]:
        return iter(self._store)


def check_modifiers(modifiers: Sequence[Any], owner: Any) -> tuple:
    """The modifiers as a tuple; ``TypeError`` naming any that is not a modifier factory."""
    if not modifiers and isinstance(modifiers, (tuple, list)):
        return ()
    if isinstance(modifiers, ModifierFactory) or not isinstance(modifiers, Iterable):
        raise TypeError(f"modifiers of {safe_repr(owner)} must be a sequence of ModifierFactory, got {safe_repr(modifiers)}")
    modifiers = tuple(modifiers)
    for modifier in modifiers:
        if isinstance(modifier, type):
            raise TypeError(f"modifier {safe_repr(modifier)} of {safe_repr(owner)} is a class: pass an instance of this ModifierFactory")
        if not callable(getattr(modifier, "create", None)):
            raise TypeError(f"modifier {safe_repr(modifier)} of {safe_repr(owner)} is not a ModifierFactory: it has no create() method")
    return modifiers
