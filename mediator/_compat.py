"""Version shims shared by both engines."""

import asyncio
import contextvars
import inspect
import sys
import types
from typing import Any, Generator

if sys.version_info >= (3, 11):
    ExceptionGroup = ExceptionGroup  # noqa: A001,F821 - the builtin
else:  # pragma: no cover - exercised on 3.9/3.10 and PyPy 3.9
    from exceptiongroup import ExceptionGroup  # noqa: F401

__all__ = ["ExceptionGroup", "add_note", "mark_coroutine_function", "resume_in_task"]


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``, also below 3.11 (where ``exceptiongroup`` prints ``__notes__``)."""
    notes = getattr(error, "__notes__", None)
    if notes is None:
        try:
            error.__notes__ = notes = []
        except AttributeError:  # an exception type without a __dict__
            return
    notes.append(note)


def mark_coroutine_function(fn: Any) -> Any:
    """Mark ``fn``, a plain function that returns awaitables, as a coroutine function.

    ``asyncio.iscoroutinefunction`` honours the mark on every version, ``inspect``'s from
    3.12 on (below 3.12 it reads only the code's flags). Code that decides by them whether
    to await a callable or run it in a thread must await it: run in a thread, the
    awaitable it returns would be dropped unawaited.
    """
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is not None:
        fn._is_coroutine = marker
    if hasattr(inspect, "markcoroutinefunction"):
        inspect.markcoroutinefunction(fn)
    return fn


@types.coroutine
def _carry_on(coroutine: Any, yielded: Any) -> Generator[Any, None, Any]:
    """The rest of ``yield from coroutine`` for a coroutine already started by hand.

    The first step of a task comes a loop turn after it is created, which is exactly
    what a bare ``yield`` (``None``, as ``asyncio.sleep(0)`` gives) asks for: so it is
    resumed at once. A future is handed to the task to wait on, as usual.
    """
    try:
        if yielded is None:
            yielded = coroutine.send(None)
        while True:
            try:
                yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # cancellation, or a future's exception
                yielded = coroutine.throw(error)
            else:
                yielded = coroutine.send(None)
    except StopIteration as stop:  # returned: a generator must not let it escape (PEP 479)
        return stop.value


async def _resume(coroutine: Any, yielded: Any) -> Any:
    return await _carry_on(coroutine, yielded)


def resume_in_task(coroutine: Any, yielded: Any, context: contextvars.Context) -> "asyncio.Task[Any]":
    """A task, in ``context``, that carries on ``coroutine``, stopped after yielding ``yielded``."""
    create_task = asyncio.get_running_loop().create_task
    if sys.version_info >= (3, 11):
        return create_task(_resume(coroutine, yielded), context=context)
    return context.run(create_task, _resume(coroutine, yielded))  # the task copies it: same values
