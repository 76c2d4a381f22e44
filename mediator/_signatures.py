"""The ``async def`` signatures of the compiled engine's C methods (see ``_method.h``).

``execute`` and ``publish`` are C functions that return awaitables; each introspects as
the coroutine function below (its name, docstring, ``__code__`` and signature), so that
``inspect.iscoroutinefunction(bus.publish)`` is true, as it was for python-mediator 0.7's
``async def`` methods. They carry the marks too, for ``asyncio.iscoroutinefunction`` on
Python 3.9, where ``inspect`` takes nothing but a true function. These bodies never run.
"""

from typing import Any

from mediator._compat import mark_coroutine_function


class RequestDispatcher:
    @mark_coroutine_function
    async def execute(self, obj: Any, **inject: Any) -> Any:
        """Dispatch ``obj`` to its handler; returns an awaitable of the result."""
        raise NotImplementedError  # pragma: no cover


class EventDispatcher:
    @mark_coroutine_function
    async def publish(self, obj: Any, **inject: Any) -> None:
        """Run every handler of ``type(obj)`` with the bus's strategy (or ``strategy=``)."""
        raise NotImplementedError  # pragma: no cover
