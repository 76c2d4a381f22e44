"""``Aggregate`` and ``@applies``: state changed only by the events it records.

An applier is a method decorated with ``@applies`` whose event parameter is annotated
with the event class it applies. At class creation every applier (inherited ones too; a
subclass overrides one by defining a method of the same name, or another applier of the
same event class) goes into one table keyed by the exact event class, so replaying
events does one dict lookup per event and no inspection. The event classes are
registered with the default codec, so stored events of those types decode.
"""

import inspect
import typing
import uuid
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar

from mediator.codec import Codec, codec as default_codec
from mediator.eventsourcing.errors import NoApplierError

__all__ = ["Aggregate", "applies"]

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Aggregate")

_MARK = "__mediator_applies__"


def applies(method: F) -> F:
    """Mark ``method(self, event: EventClass)`` as the applier of ``EventClass``.

    The annotation of its one event parameter names the class; it is read when the
    aggregate class is created. An applier returns nothing and must not fail for an
    event it accepted once (it runs again on every load).
    """
    function = getattr(method, "__func__", method)
    if not callable(function) or isinstance(method, (staticmethod, classmethod)):
        raise TypeError(f"@applies decorates a plain method (self, event), got {method!r}")
    setattr(function, _MARK, True)
    return method


def _event_class(owner: type, name: str, function: Any) -> type:
    """The event class an applier's annotation names (clear errors otherwise)."""
    where = f"{owner.__qualname__}.{name}"
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as error:
        raise TypeError(f"@applies {where}: cannot read its signature ({error})") from None
    if len(parameters) != 2 or any(
        p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters
    ):
        raise TypeError(f"@applies {where} must take exactly (self, event), got {inspect.signature(function)}")
    event_parameter = parameters[1]
    if event_parameter.annotation is inspect.Parameter.empty:
        raise TypeError(f"@applies {where}: annotate its event parameter {event_parameter.name!r} with the event class")
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:
        raise TypeError(f"@applies {where}: cannot resolve the annotation of {event_parameter.name!r} ({error})") from None
    cls = hints.get(event_parameter.name)
    if not isinstance(cls, type) or typing.get_origin(cls) is not None:  # list[int] passes for a type on 3.9
        raise TypeError(f"@applies {where}: the annotation of {event_parameter.name!r} must be a class, got {cls!r}")
    return cls


class Aggregate:
    """An event-sourced entity: ``id``, ``version``, ``pending`` and ``record(event)``.

    ``cls()`` makes a new one with a fresh id (``str(uuid4())``), ``cls(id="...")`` one
    with that id; its stream in the store is named by its id. Loading it from a store
    does not call ``__init__``: its state comes from its appliers alone.

    ``snapshot_version`` names the form of ``snapshot_state()``; change it when the
    aggregate's attributes change meaning, and older snapshots are ignored (the
    aggregate is then rebuilt from its events).
    """

    _appliers: ClassVar[Dict[type, Callable[[Any, Any], None]]] = {}
    snapshot_version: ClassVar[int] = 1

    id: str
    version: int
    pending: List[Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers: Dict[type, Callable[[Any, Any], None]] = {}
        names: Dict[str, Tuple[type, Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                function = getattr(member, "__func__", member)
                if name in names:  # a more derived class redefines the name: the old applier goes
                    old_cls, old_function = names.pop(name)
                    if appliers.get(old_cls) is old_function:
                        del appliers[old_cls]
                if not getattr(function, _MARK, False):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    raise TypeError(f"@applies {klass.__qualname__}.{name} must be a plain method (self, event)")
                event_cls = _event_class(klass, name, function)
                appliers[event_cls] = function
                names[name] = (event_cls, function)
        cls._appliers = appliers
        for event_cls in appliers:
            if default_codec.supports(event_cls):
                default_codec.register(event_cls)

    def __init__(self, *, id: Optional[str] = None) -> None:
        if id is None:
            id = str(uuid.uuid4())
        elif not isinstance(id, str) or not id:
            raise TypeError(f"an aggregate id must be a non-empty str, got {id!r}")
        self.id = id
        self.version = 0
        self.pending = []

    @classmethod
    def event_classes(cls) -> Tuple[type, ...]:
        """The event classes this aggregate applies."""
        return tuple(cls._appliers)

    @classmethod
    def _register_events(cls, codec: Codec) -> None:
        for event_cls in cls._appliers:
            if codec.supports(event_cls):
                codec.register(event_cls)

    def record(self, event: Any) -> None:
        """Apply ``event`` to this aggregate and stage it for the next save."""
        applier = type(self)._appliers.get(type(event))
        if applier is None:
            raise self._no_applier(event)
        applier(self, event)
        self.version += 1
        self.pending.append(event)

    def _no_applier(self, event: Any) -> NoApplierError:
        cls = type(self)
        known = ", ".join(sorted(c.__qualname__ for c in cls._appliers)) or "none"
        return NoApplierError(
            f"{cls.__qualname__} has no @applies method for {type(event).__module__}.{type(event).__qualname__} "
            f"(it applies: {known})"
        )

    def _replay(self, events: List[Any]) -> None:
        """Apply stored events (not staged)."""
        appliers = type(self)._appliers
        for event in events:
            applier = appliers.get(type(event))
            if applier is None:
                raise self._no_applier(event)
            applier(self, event)
        self.version += len(events)

    @classmethod
    def _blank(cls: Type[A], id: str) -> A:
        """An instance with no state (``__init__`` not called), to replay into."""
        self = cls.__new__(cls)
        self.id = id
        self.version = 0
        self.pending = []
        return self

    # -- snapshots -------------------------------------------------------------------

    def snapshot_state(self) -> Dict[str, Any]:
        """The aggregate's state as a JSON dict (default: its attributes, but ``id``,
        ``version`` and ``pending``). Override with ``restore_state`` for state JSON
        does not keep as it is (sets, tuples, dataclasses, datetimes)."""
        return {k: v for k, v in vars(self).items() if k not in ("id", "version", "pending")}

    def restore_state(self, state: Dict[str, Any]) -> None:
        """Set the state ``snapshot_state`` gave (default: as attributes)."""
        vars(self).update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} id={self.id!r} version={self.version} pending={len(self.pending)}>"
