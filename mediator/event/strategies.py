"""Publish strategies: how ``LocalEventBus.publish`` runs the handlers of an event.

- ``background`` (default): start every handler as a supervised background task and
  return; failures go to the bus's ``on_error`` hook.
- ``concurrent`` (``sync_mode=True``): start every handler at once, in registration
  order, and return when all have finished; failures are raised together as an
  ``EventHandlerErrors`` exception group.
- ``sequential``: await each handler in registration order before starting the next;
  failures are raised together as for ``concurrent``.

The three are run by the engine itself. A strategy of your own is a ``PublishStrategy``:
an async callable taking the event and its ``HandlerRun``s, one per handler, in
registration order.
"""

import inspect
from typing import Any, Awaitable, Dict, Sequence, Tuple

from mediator._safe import safe_repr

__all__ = ["PublishStrategy", "HandlerRun", "BACKGROUND", "CONCURRENT", "SEQUENTIAL", "resolve_strategy"]


class HandlerRun:
    """One handler's run of one event, for a custom strategy to start or spawn (once)."""

    __slots__ = ("handler", "event", "_bus", "_route", "_inject")

    def __init__(self, bus: Any, route: Any, event: Any, inject: Dict[str, Any]) -> None:
        self.handler = route.handler
        self.event = event
        self._bus = bus
        self._route = route
        self._inject = inject

    async def start(self) -> None:
        """Run the handler now, in its own copy of the publisher's context, to its end."""
        task = self._bus._start(self._route, self.event, self._inject)
        if task is not None:
            await task

    def spawn(self) -> None:
        """Run the handler as a background run, supervised by the bus (``drain``, ``on_error``).

        ``max_pending`` bounds ``publish`` calls, not spawns from a strategy already inside one.
        """
        if self._bus._closed:
            raise self._bus._closed_error(self.event)
        self._bus._spawn((self._route,), self.event, self._inject)

    def __repr__(self) -> str:
        return f"<HandlerRun {safe_repr(self.handler)} of {safe_repr(self.event)}>"


class PublishStrategy:
    """How ``publish`` runs an event's handlers: ``await strategy(event, runs)``.

    Subclass and implement ``__call__``; raise to make ``publish`` raise (collect
    failures in an ``mediator.errors.EventHandlerErrors`` to report them all).
    """

    async def __call__(self, event: Any, runs: Sequence[HandlerRun]) -> None:
        raise NotImplementedError(f"{type(self).__qualname__} must implement __call__(event, runs)")


class _EngineStrategy(PublishStrategy):
    """A built-in strategy: the engine runs it (``kind`` is its number there)."""

    def __init__(self, name: str, kind: int) -> None:
        self.name = name
        self.kind = kind

    async def __call__(self, event: Any, runs: Sequence[HandlerRun]) -> None:
        raise TypeError(f"the {self.name!r} strategy is run by the bus itself, not called")

    def __repr__(self) -> str:
        return f"<PublishStrategy {self.name!r}>"


BACKGROUND = _EngineStrategy("background", 0)
CONCURRENT = _EngineStrategy("concurrent", 1)
SEQUENTIAL = _EngineStrategy("sequential", 2)
_CUSTOM = 3
_BY_NAME = {strategy.name: strategy for strategy in (BACKGROUND, CONCURRENT, SEQUENTIAL)}


def resolve_strategy(value: Any) -> Tuple[int, Any]:
    """``(engine kind, strategy)`` for a strategy name or object; ``ValueError``/``TypeError`` else."""
    if isinstance(value, str):
        strategy = _BY_NAME.get(value)
        if strategy is None:
            raise ValueError(f"unknown publish strategy {safe_repr(value)}: use one of {', '.join(map(repr, _BY_NAME))}")
        return strategy.kind, strategy
    if isinstance(value, _EngineStrategy):
        return value.kind, value
    if callable(value):
        return _CUSTOM, value
    raise TypeError(f"a publish strategy is a name or an async callable (event, runs), got {safe_repr(value)}")


def run_custom(strategy: Any, bus: Any, group: Sequence[Any], event: Any, inject: Dict[str, Any]) -> Awaitable[None]:
    """Call a custom strategy with one ``HandlerRun`` per route of ``group``."""
    result = strategy(event, tuple(HandlerRun(bus, route, event, inject) for route in group))
    if not inspect.isawaitable(result):
        raise TypeError(f"publish strategy {safe_repr(strategy)} returned {safe_repr(result)}: it must be an async callable (event, runs)")
    return result
