"""``LocalEventBus``: every handler of an event class, in this process."""

import asyncio
import logging
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from mediator._engine import EventDispatcher
from mediator._safe import safe_repr
from mediator.common.factory import CallableHandlerPolicy, HandlerFactoryCascade, PolicyType
from mediator.common.introspection import HandlerIntrospection
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import CollectionHandlerStore, HandlerEntry, HandlerRegistry
from mediator.common.routes import compile_route
from mediator.errors import EventBusClosedError
from mediator.event.base import EventPublisher, EventSubscriber
from mediator.event.strategies import CONCURRENT, resolve_strategy, run_custom

__all__ = ["LocalEventBus", "EventHandlerRegistry", "CancelledRun"]

logger = logging.getLogger("mediator")


class EventHandlerRegistry(HandlerRegistry):
    """A registry of event handlers (any number per class), to ``include`` into a bus."""

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
    ) -> None:
        super().__init__(CollectionHandlerStore(), policies or [CallableHandlerPolicy()], cascade, modifiers)


class _GroupStore(CollectionHandlerStore):
    """Keeps every entry and compiles it into the bus's per-class handler tuple."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher

    def add(self, entry: HandlerEntry) -> None:
        if getattr(entry.handler, "kind", None) == "stream":
            raise TypeError(
                f"{safe_repr(entry.handler)} is an async generator: event handlers are async or plain functions"
            )
        route = compile_route(entry)
        super().add(entry)
        self._dispatcher._group_add(entry.key, route)


class CancelledRun(NamedTuple):
    """A background handler run that ``aclose`` cancelled at its timeout."""

    event: Any
    handler: Any


ErrorHook = Callable[[BaseException, Any, Any], Any]


class LocalEventBus(EventDispatcher, EventPublisher, HandlerRegistry, EventSubscriber, HandlerIntrospection):
    """Publishes each event to all its handlers, in registration order.

    ``strategy`` says how (see ``mediator.event.strategies``): ``"background"`` (the
    default) starts each handler as a supervised background task and returns;
    ``"concurrent"`` (what ``sync_mode=True`` means) and ``"sequential"`` return once all
    have finished and raise an ``EventHandlerErrors`` group of their failures.
    ``publish(event, strategy=...)`` overrides it for one call.

    Background runs are never lost: each failure goes to ``on_error(error, event,
    handler)`` (default: logged with its traceback on the ``mediator`` logger);
    ``drain()`` waits for them, ``aclose()`` and ``async with`` shut the bus down;
    ``max_pending=N`` makes ``publish`` wait while N background runs are in flight.
    """

    def __init__(
        self,
        policies: Optional[Sequence[PolicyType]] = None,
        cascade: Optional[HandlerFactoryCascade] = None,
        modifiers: Sequence[ModifierFactory] = (),
        sync_mode: bool = False,
        *,
        strategy: Any = None,
        on_error: Optional[ErrorHook] = None,
        max_pending: Optional[int] = None,
        polymorphic: bool = False,
    ) -> None:
        EventDispatcher.__init__(self, sync_mode, polymorphic)
        if strategy is not None:
            kind, strategy = resolve_strategy(strategy)
            if sync_mode and strategy is not CONCURRENT:
                raise ValueError(f"sync_mode=True means the concurrent strategy; it contradicts strategy={safe_repr(strategy)}")
            self._kind, self._strategy = kind, strategy
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable (error, event, handler), got {safe_repr(on_error)}")
        self._on_error = on_error
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
                raise ValueError(f"max_pending must be a positive int, got {safe_repr(max_pending)}")
            self._max_pending = max_pending
        HandlerRegistry.__init__(self, _GroupStore(self), policies or [CallableHandlerPolicy()], cascade, modifiers)

    @property
    def pending(self) -> int:
        """How many background handler runs are in flight."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """Whether the bus was closed: ``publish`` raises ``EventBusClosedError``."""
        return self._closed

    async def drain(self, timeout: Optional[float] = None) -> None:
        """Wait until every background run has finished, including runs they start.

        Raises ``asyncio.TimeoutError`` (``TimeoutError``) if some are still running
        after ``timeout`` seconds; they keep running.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            if self._idle is None or self._idle.done():
                self._idle = loop.create_future()
            remaining = None if deadline is None else deadline - loop.time()
            try:
                if remaining is not None and remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(asyncio.shield(self._idle), remaining)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(
                    f"{len(self._tasks)} background handler run(s) still in flight after {timeout}s"
                ) from None

    async def aclose(self, timeout: Optional[float] = None) -> List[CancelledRun]:
        """Stop accepting publishes, drain, and cancel what is left after ``timeout`` seconds.

        Returns the runs it cancelled (also logged as a warning); failures of the others
        still go to the error hook.
        """
        self._closed = True
        self._wake_slot_waiters()  # publishes waiting for room: they now find the bus closed
        try:
            await self.drain(timeout)
            return []
        except asyncio.TimeoutError:
            pass
        cancelled = []
        while self._tasks:  # runs may start others as they are cancelled: until none is left
            left = list(self._tasks.items())
            for task, _ in left:
                self._cancel_run(task)
            await asyncio.wait([task for task, _ in left])
            cancelled += [CancelledRun(event, route.handler) for task, (event, route) in left if task.cancelled()]
        if cancelled:
            logger.warning(
                "closing the event bus cancelled %d handler run(s): %s",
                len(cancelled),
                ", ".join(f"{safe_repr(run.handler)} on {safe_repr(run.event)}" for run in cancelled),
            )
        return cancelled

    async def __aenter__(self) -> "LocalEventBus":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def _routes_of(self, cls: type) -> Tuple[Any, ...]:
        group = self._groups.get(cls)
        if group is None:
            group = self._resolve(cls) if self._polymorphic else ()
        return group

    def _strategy_for(self, value: Any) -> Tuple[int, Any]:
        return resolve_strategy(value)

    def _run_custom(self, strategy: Any, group: Tuple[Any, ...], event: Any, inject: Dict[str, Any]) -> Any:
        return run_custom(strategy, self, group, event, inject)

    def _closed_error(self, event: Any) -> EventBusClosedError:
        return EventBusClosedError(f"the event bus is closed: cannot publish {safe_repr(event)}")
