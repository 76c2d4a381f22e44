"""Ready modifiers: ``timeout`` and ``retry``, for requests and events alike.

Both must own the handler's await, so they are ``ModifierFactory`` layers rather than
hooks. Put them in any ``modifiers=`` list (a bus's, a registry's, one ``register``'s).
"""

import asyncio
from typing import Any, Callable, Tuple, Type, Union

from mediator._safe import safe_repr
from mediator.common.modifiers import ModifierFactory
from mediator.common.types import ActionCallType, ActionResult, ActionSubject

__all__ = ["timeout", "retry", "Timeout", "Retry"]

Backoff = Union[float, Callable[[int], float]]


class Timeout(ModifierFactory):
    """Fails the action with ``asyncio.TimeoutError`` (``TimeoutError``) after ``seconds``.

    The action runs in a task of its own, which is what the deadline cancels: it does not
    depend on which task is current when the action starts (an awaited publish starts a
    handler inside the publishing task). A ``TimeoutError`` the handler raises itself
    passes through unchanged.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"timeout(seconds) takes a positive number of seconds, got {safe_repr(seconds)}")
        self.seconds = seconds

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        seconds = self.seconds
        target = kwargs.get("target", call)

        async def layer(action: ActionSubject) -> ActionResult:
            task = asyncio.ensure_future(call(action))
            try:
                await asyncio.wait((task,), timeout=seconds)
            except BaseException:  # cancelled while waiting: the action goes too
                task.cancel()
                raise
            if task.done():
                return task.result()
            task.cancel()
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is None:
                return task.result()  # it finished as it was being cancelled
            raise asyncio.TimeoutError(f"{safe_repr(target)} did not finish {safe_repr(action.subject)} within {seconds}s")

        return layer

    def __repr__(self) -> str:
        return f"timeout({self.seconds!r})"


class Retry(ModifierFactory):
    """Runs the action again when it raises one of ``on``, up to ``attempts`` times in all.

    Between attempts it waits ``backoff * 2 ** (n - 1)`` seconds after the n-th failure
    (or ``backoff(n)`` seconds, if ``backoff`` is callable). The last failure is raised.
    """

    def __init__(
        self, attempts: int, backoff: Backoff = 0.0, on: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = (Exception,)
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"retry(attempts) takes a positive int, got {safe_repr(attempts)}")
        if not callable(backoff) and (isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0):
            raise ValueError(f"retry(backoff=) takes seconds >= 0 or a callable(attempt) -> seconds, got {safe_repr(backoff)}")
        on = on if isinstance(on, tuple) else (on,)
        if not on or not all(isinstance(cls, type) and issubclass(cls, Exception) for cls in on):
            raise TypeError(f"retry(on=) takes Exception subclasses, got {safe_repr(on)}")
        self.attempts = attempts
        self.backoff = backoff
        self.on = on

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure."""
        if callable(self.backoff):
            return float(self.backoff(failures))
        return self.backoff * 2 ** (failures - 1)

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        attempts, on, delay = self.attempts, self.on, self.delay

        async def layer(action: ActionSubject) -> ActionResult:
            failures = 0
            while True:
                try:
                    return await call(action)
                except on:
                    failures += 1
                    if failures >= attempts:
                        raise
                seconds = delay(failures)
                if seconds > 0:
                    await asyncio.sleep(seconds)

        return layer

    def __repr__(self) -> str:
        return f"retry({self.attempts!r}, backoff={self.backoff!r}, on={self.on!r})"


def timeout(seconds: float) -> Timeout:
    """A modifier that fails the action with ``TimeoutError`` after ``seconds``."""
    return Timeout(seconds)


def retry(attempts: int, backoff: Backoff = 0.0, on: Any = (Exception,)) -> Retry:
    """A modifier that retries the action on ``on`` errors, ``attempts`` times in all."""
    return Retry(attempts, backoff, on)
