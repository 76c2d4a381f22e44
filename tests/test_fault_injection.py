"""Fault injection: floods of events whose handlers fail, hang past a timeout, cancel
themselves or are cancelled, and a shutdown in the middle of a flood.

Every (event, handler) run must be accounted for exactly once: it finished, or its
failure was reported (``on_error`` or an ``EventHandlerErrors`` group), or ``aclose``
cancelled it, or its publish was refused because the bus was closed. None vanishes.
"""

import asyncio
import random
from collections import Counter

import pytest

from mediator.errors import EventBusClosedError, EventHandlerErrors
from mediator.event import LocalEventBus
from mediator.modifiers import timeout

TYPES = 20
HANDLERS = 4  # per event type
EVENTS = 10_000
HANG_AFTER = 0.05  # the timeout() put on handlers that may hang


class Event:
    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return f"{type(self).__name__}(n={self.n})"


EVENT_TYPES = [type(f"Event{i}", (Event,), {}) for i in range(TYPES)]


class Fault(Exception):
    pass


TIMED = (0, 1)  # the handlers with a timeout() modifier: only they may hang (or wait to be killed)


def make_plan(seed, events, weights, hangs=TIMED):
    """What each run does: ``plan[(n, h)]`` for event ``n`` and handler index ``h``.

    Only the handlers in ``hangs`` may hang or wait to be killed; the others fail instead.
    """
    rng = random.Random(seed)
    outcomes, cumulative = zip(*weights.items())
    plan = {}
    for n in range(events):
        for h in range(HANDLERS):
            outcome = rng.choices(outcomes, weights=cumulative)[0]
            plan[n, h] = "fail" if outcome in ("hang", "killed") and h not in hangs else outcome
    return plan


class Flood:
    """A bus with ``HANDLERS`` handlers per event type acting out ``plan``, and the books."""

    def __init__(self, plan, deadline=None, **bus_options):
        self.plan = plan
        self.deadline = deadline
        self.finished = Counter()  # (n, h) -> how many times it finished
        self.reported = Counter()  # (n, h) -> how many times its failure was reported
        self.report_kinds = {}  # (n, h) -> type of the reported error
        self.victims = []  # tasks of the runs waiting to be cancelled by someone else
        self.closed_and_done = False  # set once aclose() has returned
        self.started_after_close = []
        self.never = None
        self.index = {}  # handler function -> handler index
        self.bus = LocalEventBus(on_error=self.on_error, **bus_options)
        for cls in EVENT_TYPES:
            for h in range(HANDLERS):
                handler = self.handler(h, cls)
                self.index[handler] = h
                self.bus.register(handler, modifiers=[timeout(deadline)] if deadline and h in TIMED else [])

    def handler(self, h, cls):
        async def handle(event):
            if self.closed_and_done:
                self.started_after_close.append((event.n, h))
            await self.act(self.plan[event.n, h], event, h)
            self.finished[event.n, h] += 1

        handle.__annotations__ = {"event": cls}
        handle.__name__ = handle.__qualname__ = f"{cls.__name__}_handler{h}"
        return handle

    async def act(self, outcome, event, h):
        if outcome == "fail_at_once":
            raise Fault(event.n, h)
        await asyncio.sleep(0)
        if outcome == "fail":
            raise Fault(event.n, h)
        if outcome == "slow":
            for _ in range(3):
                await asyncio.sleep(0)
        elif outcome == "hang":
            await self.never.wait()
        elif outcome == "cancel_self":
            asyncio.current_task().cancel()
            await asyncio.sleep(0)
        elif outcome == "killed":
            self.victims.append(asyncio.current_task())
            await self.never.wait()

    def on_error(self, error, event, handler):
        key = (event.n, self.index[handler.obj])
        self.reported[key] += 1
        self.report_kinds[key] = type(error)

    def record_group(self, group, event):
        assert isinstance(group, EventHandlerErrors) and group.event is event
        assert len(group.handlers) == len(group.exceptions)
        for error, handler in zip(group.exceptions, group.handlers):
            assert repr(event) in error.__notes__[-1] and repr(handler) in error.__notes__[-1]
            self.on_error(error, event, handler)

    def event(self, n):
        return EVENT_TYPES[n % TYPES](n)

    def check_books(self, cancelled=(), refused=()):
        """Every run counted once: finished + reported + cancelled + refused == all runs."""
        cancelled = Counter((run.event.n, self.index[run.handler.obj]) for run in cancelled)
        refused = Counter((n, h) for n in refused for h in range(HANDLERS))
        books = self.finished + self.reported + cancelled + refused
        assert set(books) == set(self.plan), f"vanished: {sorted(set(self.plan) - set(books))[:10]}"
        doubles = sorted(key for key, count in books.items() if count != 1)
        assert not doubles, f"counted more than once: {doubles[:10]}"
        return cancelled

    def check_reported_kinds(self):
        """Each failure is reported as what it was; only runs planned to succeed finish.

        With a ``deadline`` (a timeout() modifier), a timed run may also be reported as a
        TimeoutError: a loop stalled long enough (a GC pause under a flood) does make a
        run miss its deadline. That is a reported failure, not a lost run.
        """
        expected = {
            "ok": (), "slow": (), "fail": (Fault,), "fail_at_once": (Fault,), "hang": (asyncio.TimeoutError,),
            "cancel_self": (asyncio.CancelledError,), "killed": (asyncio.CancelledError,),
        }
        for key, outcome in self.plan.items():
            kind = self.report_kinds.get(key)
            timed = self.deadline is not None and key[1] in TIMED
            allowed = expected[outcome] + ((asyncio.TimeoutError,) if timed else ())
            if kind is not None:
                assert kind in allowed, (key, outcome, kind)
            elif key in self.finished:
                assert outcome in ("ok", "slow"), (key, outcome)


BACKGROUND_FAULTS = {"ok": 80, "fail": 8, "fail_at_once": 4, "hang": 2}
CANCELLATIONS = dict(BACKGROUND_FAULTS, cancel_self=2, killed=2)


@pytest.mark.parametrize(
    "weights",
    [
        BACKGROUND_FAULTS,
        CANCELLATIONS,
    ],
    ids=["failures-and-hangs", "with-cancellations"],
)
def test_background_flood_reports_every_failure_once(weights):
    flood = Flood(make_plan(1234, EVENTS, weights), deadline=HANG_AFTER)

    async def main():
        flood.never = asyncio.Event()
        for n in range(EVENTS):
            await flood.bus.publish(flood.event(n))
        doomed = sum(1 for outcome in flood.plan.values() if outcome == "killed")
        while len(flood.victims) < doomed:  # every run to kill is waiting
            await asyncio.sleep(0)
        for task in flood.victims:
            task.cancel()
        await asyncio.wait_for(flood.bus.drain(), 30)
        assert flood.bus.pending == 0

    asyncio.run(main())
    flood.check_books()
    flood.check_reported_kinds()
    failing = {key for key, outcome in flood.plan.items() if outcome not in ("ok", "slow")}
    assert failing <= set(flood.report_kinds)


SHUTDOWN_FAULTS = {"ok": 80, "slow": 10, "fail": 6, "fail_at_once": 2, "hang": 1}


@pytest.mark.parametrize("max_pending", [None, 400], ids=["unbounded", "max_pending=400"])
def test_shutdown_in_the_middle_of_a_flood_loses_no_run(max_pending):
    """aclose() while a publisher floods: refused + cancelled + reported + finished == all."""
    flood = Flood(make_plan(99, EVENTS, SHUTDOWN_FAULTS, hangs=range(HANDLERS)), max_pending=max_pending)
    refused = []

    async def publisher(halfway):
        for n in range(EVENTS):
            try:
                await flood.bus.publish(flood.event(n))
            except EventBusClosedError as error:
                assert repr(flood.event(n)) in str(error)
                refused.append(n)
            if n == EVENTS // 2:
                halfway.set()
            if not max_pending and n % 50 == 0:
                await asyncio.sleep(0)  # let the handlers run as the flood goes on

    async def main():
        flood.never = asyncio.Event()
        halfway = asyncio.Event()
        publishing = asyncio.ensure_future(publisher(halfway))
        await halfway.wait()
        cancelled = await asyncio.wait_for(flood.bus.aclose(timeout=0.05), 30)
        flood.closed_and_done = True
        assert flood.bus.pending == 0
        await asyncio.wait_for(publishing, 30)
        await asyncio.sleep(0)
        assert flood.bus.pending == 0
        return cancelled

    cancelled = flood.check_books(asyncio.run(main()), refused)
    flood.check_reported_kinds()
    assert refused and refused == list(range(refused[0], EVENTS))  # every publish after the close
    assert refused[0] > EVENTS // 2
    assert flood.started_after_close == []  # no run starts once aclose() has returned
    hung = {key for key, outcome in flood.plan.items() if outcome == "hang" and key[0] < refused[0]}
    assert hung and hung <= set(cancelled)  # each hung run was cancelled at close
    assert set(cancelled) <= {key for key, outcome in flood.plan.items() if outcome in ("hang", "slow")}


CONCURRENT_FAULTS = {"ok": 86, "fail": 8, "fail_at_once": 6}
PUBLISHERS = 100


def test_concurrent_publishes_return_every_failure_in_their_groups():
    """Many publishers awaiting concurrent publishes; failures come back in the groups."""
    plan = make_plan(4321, EVENTS, CONCURRENT_FAULTS)
    rng = random.Random(8765)
    for n in range(EVENTS):  # handler 0 of one event in 40 hangs past its timeout
        if rng.random() < 1 / 40:
            plan[n, 0] = "hang"
    flood = Flood(plan, deadline=4 * HANG_AFTER, strategy="concurrent")
    raised = Counter()

    async def publisher(numbers):
        for n in numbers:
            event = flood.event(n)
            try:
                await flood.bus.publish(event)
            except EventHandlerErrors as group:
                raised[n] += 1
                flood.record_group(group, event)
            else:
                raised[n] += 0

    async def main():
        flood.never = asyncio.Event()
        await asyncio.wait_for(
            asyncio.gather(*(publisher(range(i, EVENTS, PUBLISHERS)) for i in range(PUBLISHERS))), 30
        )
        assert flood.bus.pending == 0

    asyncio.run(main())
    flood.check_books()
    flood.check_reported_kinds()
    failing = {n for (n, _), outcome in plan.items() if outcome != "ok"}
    assert failing <= {n for n, count in raised.items() if count}  # a group for each failing event
    assert set(raised.values()) <= {0, 1} and len(raised) == EVENTS
