"""One thread that runs blocking calls in the order they were sent, for one event loop.

What ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor`` does, with less
per call: no ``concurrent.futures.Future`` chained to the loop's future, no work-item
object and no ``partial``; and the results of calls that finish back to back reach the
loop in one wake-up (one ``call_soon_threadsafe``) instead of one each. A call whose
future was cancelled before the thread took it is not run (as an executor's).
"""

import asyncio
import threading
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any, Callable, Deque, Optional, Tuple, TypeVar

T = TypeVar("T")

_STOP = object()


class Worker:
    """A thread running ``submit``-ted calls one at a time, in order."""

    def __init__(self, name: str) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._calls: "SimpleQueue[Any]" = SimpleQueue()
        self._done: Deque[Tuple["asyncio.Future[Any]", Optional[BaseException], Any]] = deque()
        self._wake_pending = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        """Queue ``fn(*args)``; the returned future (of the running loop) gets its result.

        The results go to the loop of the latest call: a store opened under one
        ``asyncio.run`` keeps working under the next (whose calls come after the last).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
        future = loop.create_future()
        self._calls.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Let the thread end once the calls already sent have run."""
        self._calls.put(_STOP)

    def _run(self) -> None:
        get, done = self._calls.get, self._done
        main = threading.main_thread()
        while True:
            try:
                item = get(timeout=1.0)
            except Empty:
                if not main.is_alive():  # the interpreter is exiting and nobody closed us
                    return
                continue
            if item is _STOP:
                return
            future, fn, args = item
            if future.cancelled():
                continue
            try:
                done.append((future, None, fn(*args)))
            except BaseException as exc:  # noqa: B902 - handed to the caller as it is
                done.append((future, exc, None))
            del future, fn, args, item
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)  # type: ignore[union-attr]
                except RuntimeError:  # the loop is closed: nobody is waiting
                    done.clear()
                    self._wake_pending = False

    def _deliver(self) -> None:
        """In the loop: hand every finished call's outcome to its future."""
        self._wake_pending = False  # before the pops: a call finishing now wakes us again
        done = self._done
        while done:
            future, exc, result = done.popleft()
            if future.cancelled():
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
