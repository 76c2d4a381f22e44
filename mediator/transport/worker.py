"""``Worker``: consumes a transport's messages for one group and dispatches them through a bus.

A message is acknowledged only once every handler of its event has succeeded (or once it
is dead-lettered): at least once. A failure is retried after ``backoff`` until
``max_deliveries``, skipping the handlers that already succeeded; then the message goes
to the group's dead letters with the error and the handler. A message whose type is not
known or whose payload does not decode goes to the dead letters at once.
"""

import asyncio
import collections
import contextvars
import logging
import os
import signal
import socket
import threading
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

from mediator._compat import resume_in_task
from mediator.transport.base import (
    MESSAGE_ID_HEADER,
    Delivery,
    Transport,
    check_name,
    check_start,
)
from mediator.transport.errors import TransportClosedError

__all__ = ["Worker", "handler_name"]

logger = logging.getLogger("mediator.transport")

Backoff = Union[float, int, Callable[[int], float]]


def handler_name(handler: Any) -> str:
    """A handler's qualified name, ``module.qualname`` of the function it calls."""
    obj = getattr(handler, "obj", handler)
    function = getattr(obj, "__func__", obj)
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    module = getattr(function, "__module__", None) or type(function).__module__
    return f"{module}.{qualname}"


def _error_text(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__qualname__}: {text}" if text else type(error).__qualname__


class _Dispatch:
    """A publish strategy for one message: runs the handlers not yet done, notes the outcome."""

    __slots__ = ("worker", "done", "succeeded", "failed")

    def __init__(self, worker: "Worker", done: FrozenSet[str]) -> None:
        self.worker = worker
        self.done = done
        self.succeeded: List[str] = []
        self.failed: List[Tuple[str, BaseException]] = []

    async def __call__(self, event: Any, runs: Sequence[Any]) -> None:
        names = self.worker._names_of(runs)
        if len(runs) == 1 and not self.done:
            await self._one(names[0], runs[0])
            return
        todo = [(name, run) for name, run in zip(names, runs) if name not in self.done]
        if len(todo) == 1:
            await self._one(*todo[0])
        elif todo:
            await asyncio.gather(*(self._one(name, run) for name, run in todo))

    async def _one(self, name: str, run: Any) -> None:
        try:
            await run.start()
        except Exception as error:
            self.failed.append((name, error))
        else:
            self.succeeded.append(name)


class Worker:
    """Consumes ``group``'s messages from ``transport`` and dispatches them through ``bus``.

    ``bus`` is a ``LocalEventBus`` (or any bus with ``registered()`` and ``publish``): the
    worker consumes the event classes it has handlers for, registering them with the
    transport's codec. Each handler may take ``headers`` (the message's headers, with
    ``"message-id"``) and ``message_id`` as injected arguments.

    - ``concurrency``: at most this many messages in flight (fetched and not yet settled).
    - ``max_deliveries``: after this many failed deliveries a message is dead-lettered.
    - ``backoff``: seconds before a failed message is redelivered: a number that doubles
      per attempt (``backoff * 2 ** (attempt - 1)``), or a callable ``(attempt) -> seconds``.
    - ``claim_idle``: seconds after which a message claimed by a consumer that stopped
      extending its claim (a dead one) goes to another consumer; a running handler's claim
      is extended every ``claim_idle / 3`` seconds.
    - ``start``: ``"latest"`` (a new group sees messages published from now on) or
      ``"earliest"`` (all that the streams hold).
    - ``inbox``: an ``Inbox``; a message id already recorded there for this group is
      acknowledged without running the handlers, and one whose handlers all succeeded is
      recorded before it is acknowledged.
    - ``shutdown_timeout``: seconds a signal-triggered shutdown lets in-flight messages run.

    ``await worker.run()`` consumes until ``aclose()``, the end of ``async with``, or
    SIGTERM/SIGINT (with ``handle_signals=True``, when run in the main thread).
    """

    def __init__(
        self,
        transport: Transport,
        bus: Any,
        *,
        group: str,
        concurrency: int = 64,
        max_deliveries: int = 5,
        backoff: Backoff = 1.0,
        claim_idle: float = 30.0,
        start: str = "latest",
        inbox: Any = None,
        consumer: Optional[str] = None,
        poll: float = 1.0,
        shutdown_timeout: float = 30.0,
        handle_signals: bool = True,
    ) -> None:
        if not isinstance(transport, Transport):
            raise TypeError(f"Worker needs a mediator.transport.Transport, got {transport!r}")
        if not callable(getattr(bus, "registered", None)) or not callable(getattr(bus, "publish", None)):
            raise TypeError(f"Worker needs an event bus with registered() and publish(), got {bus!r}")
        self.group = check_name("the worker's group", group)
        self.consumer = check_name(
            "the worker's consumer name",
            consumer if consumer is not None else f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}",
        )
        _positive_int("concurrency", concurrency)
        _positive_int("max_deliveries", max_deliveries)
        if callable(backoff):
            self._backoff: Callable[[int], float] = backoff
        elif isinstance(backoff, (int, float)) and not isinstance(backoff, bool) and backoff >= 0:
            base = float(backoff)
            self._backoff = lambda attempt: base * 2 ** (attempt - 1)
        else:
            raise ValueError(f"backoff must be seconds >= 0 or a callable (attempt) -> seconds, got {backoff!r}")
        for name, value in (("claim_idle", claim_idle), ("poll", poll), ("shutdown_timeout", shutdown_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.transport = transport
        self.bus = bus
        self.concurrency = concurrency
        self.max_deliveries = max_deliveries
        self.claim_idle = float(claim_idle)
        self.start = check_start(start)
        self.inbox = inbox
        self.poll = float(poll)
        self.shutdown_timeout = float(shutdown_timeout)
        self.handle_signals = handle_signals
        self._names: Dict[Tuple[Any, ...], Tuple[str, ...]] = {}
        self._served: Set[type] = set()
        self._inflight: Dict["asyncio.Task[None]", Delivery] = {}
        self._started = False
        self._stopping = False
        self._closed = False
        self._running: Optional["asyncio.Future[None]"] = None
        self._signal: Optional["asyncio.Event"] = None  # set on any change the fetch loop waits for
        self._ready: Deque[Delivery] = collections.deque()  # fetched, not started
        self._acks: List[Delivery] = []  # settled, to acknowledge in the next batch
        self._unacked = 0  # settled and not yet acknowledged by the broker
        self._ack_tasks: Set["asyncio.Task[None]"] = set()
        self._keepalive: Optional["asyncio.Task[None]"] = None
        self._close_task: Optional["asyncio.Task[Any]"] = None

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """How many messages this worker is handling now (at most ``concurrency``)."""
        return len(self._inflight)

    async def open(self) -> "Worker":
        """Register the bus's event classes with the codec and create the group (idempotent)."""
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed")
        if self._started:
            return self
        classes = list(self.bus.registered())
        if not classes:
            raise ValueError(f"{self!r}: the bus {self.bus!r} has no event handlers: nothing to consume")
        codec = self.transport.codec
        codec.register_all(classes)
        types = sorted({codec.type_of(cls) for cls in classes})
        await self.transport.open()
        await self.transport.ensure_group(self.group, types, start=self.start, claim_idle=self.claim_idle)
        self._started = True
        return self

    async def __aenter__(self) -> "Worker":
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def run(self) -> None:
        """Consume until ``aclose()`` (or a signal); returns once the worker has stopped."""
        if self._closed or self._stopping:
            raise TransportClosedError(f"{self!r} is closed")
        if self._running is not None:
            raise RuntimeError(f"{self!r} is already running")
        await self.open()
        loop = asyncio.get_running_loop()
        self._running = loop.create_future()
        self._signal = asyncio.Event()
        installed = self._install_signals(loop)
        self._keepalive = loop.create_task(self._keep_alive())
        try:
            await self._consume()
            while self._inflight:  # aclose() cancels them at its timeout
                await asyncio.wait(list(self._inflight))
            await self._acks_sent()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            self._keepalive.cancel()
            left = list(self._inflight)
            for task in left:  # run() itself was cancelled: nothing is acknowledged
                task.cancel()
            if left:
                await asyncio.wait(left)
            try:
                await self._keepalive
            except asyncio.CancelledError:
                pass
            self._stopping = True
            if not self._running.done():
                self._running.set_result(None)
        if self._close_task is not None:
            await self._close_task

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully: stop fetching, let the messages in flight finish (acknowledged),
        give back those fetched but not started, and after ``timeout`` seconds cancel what
        is left without acknowledging it (it will be redelivered). Idempotent.
        """
        self._stopping = True
        if self._signal is not None:
            self._signal.set()
        if self._running is None:
            self._closed = True
            return
        if self._inflight:
            pending = set(self._inflight)
            done, pending = await asyncio.wait(pending, timeout=timeout)
            if pending:
                logger.warning(
                    "worker %s of group %r: cancelling %d message(s) still in flight after %ss "
                    "(not acknowledged: they will be redelivered)",
                    self.consumer,
                    self.group,
                    len(pending),
                    timeout,
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        await asyncio.shield(self._running)
        self._closed = True

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> List[int]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        installed: List[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not on this platform/loop
                continue
            installed.append(signum)
        return installed

    def _on_signal(self, signum: int) -> None:
        logger.info("worker %s of group %r: %s, shutting down", self.consumer, self.group, signal.Signals(signum).name)
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.aclose(self.shutdown_timeout))

    # -- the fetch loop ------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Fetch ahead (one fetch at a time, while fewer than ``concurrency`` wait) and
        start waiting messages while fewer than ``concurrency`` are being handled."""
        assert self._signal is not None
        loop = asyncio.get_running_loop()
        signal_ = self._signal
        ready = self._ready
        inflight = self._inflight
        concurrency = self.concurrency
        fetching: Optional["asyncio.Task[List[Delivery]]"] = None
        failures = 0
        fetch_at = 0.0
        try:
            while not self._stopping:
                while ready and len(inflight) < concurrency:
                    self._start(ready.popleft())
                if fetching is not None and fetching.done():
                    try:
                        ready.extend(fetching.result())
                        failures = 0
                    except TransportClosedError:
                        if self._stopping:
                            break
                        raise
                    except Exception as error:  # the broker is away: the transport retried already
                        failures += 1
                        delay = min(0.1 * 2 ** min(failures, 8), 5.0)
                        logger.warning(
                            "worker %s of group %r: fetch failed (%s); retrying in %.1fs",
                            self.consumer,
                            self.group,
                            _error_text(error),
                            delay,
                        )
                        fetch_at = loop.time() + delay
                        loop.call_later(delay, signal_.set)
                    fetching = None
                    continue
                if (
                    fetching is None
                    and len(ready) < concurrency
                    and self._unacked < concurrency
                    and loop.time() >= fetch_at
                ):
                    fetching = loop.create_task(
                        self.transport.fetch(self.group, self.consumer, concurrency - len(ready), self.poll)
                    )
                    fetching.add_done_callback(lambda _: signal_.set())
                await signal_.wait()
                signal_.clear()
        finally:
            if fetching is not None:
                # A fetch is not cancelled (what it claimed would wait for claim_idle): at
                # most ``poll`` seconds.
                await asyncio.wait([fetching])
                if not fetching.cancelled() and fetching.exception() is None:
                    ready.extend(fetching.result())
                elif not fetching.cancelled():
                    fetching.exception()  # logged by the loop below as a release failure at most
            if ready:
                left = list(ready)
                ready.clear()
                await self._release(left)

    def _start(self, delivery: Delivery) -> None:
        """Handle ``delivery``: at once, as far as it goes without waiting, then in a task."""
        coroutine = self._handle(delivery)
        context = contextvars.copy_context()
        try:
            yielded = context.run(coroutine.send, None)
        except StopIteration:  # settled without waiting (a handler that did not suspend)
            return
        except Exception as error:
            self._unsettled(error)
            return
        task = resume_in_task(coroutine, yielded, context)
        self._inflight[task] = delivery
        task.add_done_callback(self._settled)

    def _settled(self, task: "asyncio.Task[None]") -> None:
        self._inflight.pop(task, None)
        if self._signal is not None:
            self._signal.set()
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                self._unsettled(error)

    def _unsettled(self, error: BaseException) -> None:
        logger.error(
            "worker %s of group %r: a message could not be settled (it will be redelivered)",
            self.consumer,
            self.group,
            exc_info=error,
        )

    async def _release(self, batch: Sequence[Delivery]) -> None:
        try:
            await self.transport.release(batch)
        except Exception as error:
            logger.warning(
                "worker %s of group %r: could not release %d unstarted message(s) (%s); "
                "they will be redelivered after claim_idle",
                self.consumer,
                self.group,
                len(batch),
                _error_text(error),
            )

    async def _keep_alive(self) -> None:
        """Extend the claims of messages in flight, every ``claim_idle / 3`` seconds."""
        interval = self.claim_idle / 3
        while True:
            await asyncio.sleep(interval)
            held = [*self._inflight.values(), *self._ready]
            if held:
                try:
                    await self.transport.extend(held)
                except Exception as error:
                    logger.warning(
                        "worker %s of group %r: could not extend %d claim(s): %s",
                        self.consumer,
                        self.group,
                        len(held),
                        _error_text(error),
                    )

    # -- one message -------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        transport = self.transport
        if delivery.deliveries > self.max_deliveries:
            # Never settled in as many deliveries: its handling kills or stalls workers.
            await transport.dead_letter(
                delivery,
                error=(
                    f"abandoned: delivered {delivery.deliveries} times and never settled "
                    f"(max_deliveries={self.max_deliveries}): a worker died or stalled handling it each time"
                ),
                handler=None,
            )
            return
        try:
            event = transport.codec.decode(delivery.type, delivery.payload)
        except Exception as error:
            await transport.dead_letter(delivery, error=_decode_error_text(delivery, error), handler=None)
            return
        cls = type(event)
        if cls not in self._served and not self._serves(cls):
            await transport.dead_letter(
                delivery,
                error=f"no handler: the bus of group {self.group!r} has no handler for {type(event).__qualname__}",
                handler=None,
            )
            return
        if self.inbox is None:
            dispatch = await self._dispatch(event, delivery, {})
        else:
            async with self.inbox.scope(self.group, delivery.message_id) as scope:
                if scope.seen:
                    dispatch = None
                else:
                    dispatch = await self._dispatch(event, delivery, scope.inject)
                    scope.succeeded = not dispatch.failed
                    if scope.atomic:  # rolled back on failure: nothing counts as done
                        dispatch.succeeded.clear()
        if dispatch is None or not dispatch.failed:
            self._ack(delivery)
            return
        await self._failed(delivery, dispatch)

    async def _dispatch(self, event: Any, delivery: Delivery, inject: Dict[str, Any]) -> _Dispatch:
        """Run the handlers not done yet through the bus; the outcome is in the result."""
        done = await self.transport.handlers_done(delivery) if delivery.deliveries > 1 else frozenset()
        dispatch = _Dispatch(self, done)
        headers = dict(delivery.headers)
        headers[MESSAGE_ID_HEADER] = delivery.message_id
        await self.bus.publish(event, strategy=dispatch, headers=headers, message_id=delivery.message_id, **inject)
        return dispatch

    async def _failed(self, delivery: Delivery, dispatch: _Dispatch) -> None:
        transport = self.transport
        done = dispatch.done
        name, error = dispatch.failed[0]
        if len(dispatch.failed) > 1:
            logger.debug("more failures on %r: %r", delivery, dispatch.failed[1:])
        if delivery.deliveries >= self.max_deliveries:
            logger.error(
                "worker %s of group %r: %r failed in %s for the last time: dead-lettered",
                self.consumer,
                self.group,
                delivery,
                name,
                exc_info=error,
            )
            await transport.dead_letter(delivery, error=_error_text(error), handler=name)
            return
        logger.warning(
            "worker %s of group %r: %r failed in %s (%s): retrying",
            self.consumer,
            self.group,
            delivery,
            name,
            _error_text(error),
        )
        if dispatch.succeeded:
            await transport.mark_handlers_done(delivery, sorted(done.union(dispatch.succeeded)))
        await transport.retry(delivery, max(0.0, float(self._backoff(delivery.deliveries))))

    def _serves(self, cls: type) -> bool:
        """Whether the bus has handlers for ``cls`` (remembered once it has)."""
        if self.bus.handlers_for(cls):
            self._served.add(cls)
            return True
        return False

    def _names_of(self, runs: Sequence[Any]) -> Sequence[str]:
        """Each run's handler name, unique within the event (``name#2`` for a repeat)."""
        handlers = tuple(run.handler for run in runs)
        names = self._names.get(handlers)
        if names is None:
            taken: Set[str] = set()
            listed = []
            for handler in handlers:
                name = handler_name(handler)
                if name in taken:
                    index = 2
                    while f"{name}#{index}" in taken:
                        index += 1
                    name = f"{name}#{index}"
                taken.add(name)
                listed.append(name)
            names = self._names[handlers] = tuple(listed)
        return names

    def _ack(self, delivery: Delivery) -> None:
        """Acknowledge, in one batch with the others settled in the same loop iteration.

        The message's place is free at once; at most ``concurrency`` settled messages
        wait for their acknowledgement (the duplicates a crash can leave: those, plus
        the ones being handled).
        """
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._flush_acks)
        self._acks.append(delivery)
        self._unacked += 1

    def _flush_acks(self) -> None:
        deliveries, self._acks = self._acks, []
        if deliveries:
            task = asyncio.get_running_loop().create_task(self._send_acks(deliveries))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)

    async def _send_acks(self, deliveries: List[Delivery]) -> None:
        try:
            await self.transport.ack(deliveries)
        except Exception as error:
            logger.warning(
                "worker %s of group %r: could not acknowledge %d message(s) (%s): they will be redelivered",
                self.consumer,
                self.group,
                len(deliveries),
                _error_text(error),
            )
        finally:
            self._unacked -= len(deliveries)
            if self._signal is not None:
                self._signal.set()

    async def _acks_sent(self) -> None:
        """Until every acknowledgement queued so far has been answered."""
        while self._acks or self._ack_tasks:
            if self._acks:
                self._flush_acks()
            await asyncio.wait(list(self._ack_tasks))

    def __repr__(self) -> str:
        return f"<Worker {self.consumer!r} of group {self.group!r}>"


def _decode_error_text(delivery: Delivery, error: BaseException) -> str:
    try:
        from mediator.codec import UnknownTypeError
    except ImportError:  # pragma: no cover - the codec ships with the package
        UnknownTypeError = ()  # type: ignore[assignment,misc]
    if isinstance(error, UnknownTypeError):
        return f"unknown type: {delivery.type!r} is not a registered event type ({_error_text(error)})"
    return f"undecodable payload: {delivery.type!r} ({_error_text(error)})"


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
