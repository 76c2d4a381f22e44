"""The transport contract: what every backend (memory, Redis, JetStream) must do alike.

Everything goes through the public API: ``connect``, ``publish``, ``Worker`` over a
``LocalEventBus``, ``dead_letters`` and ``requeue``; the backend-facing methods are used
only to play a consumer that dies (it fetches and never settles).
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.transport import (
    MESSAGE_ID_HEADER,
    DeadLetter,
    TransportClosedError,
    UnsupportedURLError,
    Worker,
    connect,
    traceparent,
)
from mediator.transport.inbox import MemoryInbox


@event_type("contract.Tick")
@dataclass(frozen=True)
class Tick:
    n: int


@event_type("contract.Tock")
@dataclass(frozen=True)
class Tock:
    n: int


FAST = dict(poll=0.2, backoff=0.05, claim_idle=5.0)


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def letters_of(transport: Any, group: str) -> List[DeadLetter]:
    return [letter async for letter in transport.dead_letters(group)]


class Running:
    """A worker running in the background of a test (``async with``)."""

    def __init__(self, transport: Any, bus: Any, **options: Any) -> None:
        options = {**FAST, "handle_signals": False, **options}
        self.worker = Worker(transport, bus, **options)

    async def __aenter__(self) -> Worker:
        await self.worker.open()
        self.task = asyncio.ensure_future(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.worker.aclose(5)
        await self.task


def test_publish_reaches_handler_with_headers_and_message_id(backend: Any, run: Any) -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tick(event: Tick, headers: Dict[str, str], message_id: str) -> None:
        seen.append((event, headers, message_id))

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g"):
                token = traceparent.set("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                try:
                    first = await transport.publish(Tick(1), key="k1", headers={"tenant": "a"})
                finally:
                    traceparent.reset(token)
                second = await transport.publish(Tick(2))
                await wait_until(lambda: len(seen) == 2, what="two ticks")
        assert first != second
        by_n = {event.n: (headers, message_id) for event, headers, message_id in seen}
        assert by_n[1] == (
            {
                "tenant": "a",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                MESSAGE_ID_HEADER: first,
            },
            first,
        )
        assert by_n[2] == ({MESSAGE_ID_HEADER: second}, second)

    run(main())


def test_publish_many_stores_every_event_under_the_ids_it_returns(backend: Any, run: Any) -> None:
    seen: Dict[str, Any] = {}
    bus = LocalEventBus()

    @bus.register
    async def on_any(event: Tick, headers: Dict[str, str], message_id: str) -> None:
        seen[message_id] = (event.n, headers.get("batch"))

    @bus.register
    async def on_tock(event: Tock, message_id: str) -> None:
        seen[message_id] = ("tock", event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g"):
                ids = await transport.publish_many([Tick(n) for n in range(1_200)], headers={"batch": "b1"})
                mixed = await transport.publish_many_encoded(
                    [("contract.Tock", b'{"n": 1}'), ("contract.Tick", b'{"n": -1}')], message_ids=["x1", "x2"]
                )
                assert await transport.publish_many([]) == []
                with pytest.raises(ValueError, match="1 message ids for 2 messages"):
                    await transport.publish_many_encoded([("contract.Tick", b"{}")] * 2, message_ids=["only"])
                await wait_until(lambda: len(seen) == 1_202, what="every event of the batches")
        assert len(set(ids)) == 1_200 and mixed == ["x1", "x2"]
        assert [seen[message_id] for message_id in ids] == [(n, "b1") for n in range(1_200)]
        assert seen["x1"] == ("tock", 1) and seen["x2"] == (-1, None)

    run(main())


def test_groups_fan_out_and_workers_of_a_group_compete(backend: Any, run: Any) -> None:
    handled: Dict[str, List[int]] = {"a1": [], "a2": [], "b": []}

    def bus_for(name: str) -> LocalEventBus:
        bus = LocalEventBus()

        async def on_tick(event: Tick) -> None:
            handled[name].append(event.n)
            await asyncio.sleep(0.001)

        bus.register(on_tick)
        return bus

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus_for("a1"), group="a", concurrency=4), Running(
                transport, bus_for("a2"), group="a", concurrency=4
            ), Running(transport, bus_for("b"), group="b"):
                for n in range(200):
                    await transport.publish(Tick(n))
                await wait_until(
                    lambda: len(handled["a1"]) + len(handled["a2"]) == 200 and len(handled["b"]) == 200,
                    what="every tick in both groups",
                )
                await asyncio.sleep(0.2)
        assert sorted(handled["a1"] + handled["a2"]) == list(range(200))
        assert sorted(handled["b"]) == list(range(200))

    run(main())


def test_start_latest_and_earliest(backend: Any, run: Any) -> None:
    seen: Dict[str, List[int]] = {"late": [], "early": []}

    def bus_for(name: str) -> LocalEventBus:
        bus = LocalEventBus()

        async def on_tick(event: Tick) -> None:
            seen[name].append(event.n)

        bus.register(on_tick)
        return bus

    async def main() -> None:
        async with backend.connect() as transport:
            await transport.publish(Tick(0))  # before either group exists
            async with Running(transport, bus_for("late"), group="late", start="latest"), Running(
                transport, bus_for("early"), group="early", start="earliest"
            ):
                await transport.publish(Tick(1))
                await wait_until(lambda: len(seen["late"]) == 1 and len(seen["early"]) == 2)
                await asyncio.sleep(0.2)
        assert seen["late"] == [1]
        assert sorted(seen["early"]) == [0, 1]

    run(main())


def test_a_failed_message_is_retried_and_a_succeeded_sibling_is_not_run_again(backend: Any, run: Any) -> None:
    calls: Dict[str, int] = {"steady": 0, "flaky": 0}
    deliveries: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def steady(event: Tick) -> None:
        calls["steady"] += 1

    @bus.register
    async def flaky(event: Tick) -> None:
        calls["flaky"] += 1
        deliveries.append(calls["flaky"])
        if calls["flaky"] < 3:
            raise RuntimeError(f"attempt {calls['flaky']}")

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", max_deliveries=5):
                await transport.publish(Tick(1))
                await wait_until(lambda: calls["flaky"] == 3, what="the third attempt")
                await asyncio.sleep(0.3)
            assert await letters_of(transport, "g") == []
        assert calls == {"steady": 1, "flaky": 3}

    run(main())


def test_backoff_callable_gets_the_attempt_number(backend: Any, run: Any) -> None:
    attempts: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def fails(event: Tick) -> None:
        raise ValueError("no")

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.01

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", max_deliveries=4, backoff=backoff):
                await transport.publish(Tick(1))
                await wait_until(lambda: len(attempts) == 3, what="three retries")
                letters: List[DeadLetter] = []

                async def dead() -> bool:
                    letters[:] = await letters_of(transport, "g")
                    return bool(letters)

                for _ in range(500):
                    if await dead():
                        break
                    await asyncio.sleep(0.01)
        assert attempts == [1, 2, 3]
        assert len(letters) == 1 and letters[0].deliveries == 4

    run(main())


def test_dead_letter_after_max_deliveries_then_requeue_to_its_group_only(backend: Any, run: Any) -> None:
    broken = {"on": True}
    handled: Dict[str, List[int]] = {"g": [], "other": []}
    bus = LocalEventBus()

    @bus.register
    async def charge(event: Tick) -> None:
        if broken["on"]:
            raise ValueError(f"bad amount {event.n}")
        handled["g"].append(event.n)

    other = LocalEventBus()

    @other.register
    async def audit(event: Tick) -> None:
        handled["other"].append(event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", max_deliveries=3), Running(transport, other, group="other"):
                message_id = await transport.publish(Tick(7), headers={"tenant": "a"})
                letters: List[DeadLetter] = []
                for _ in range(1000):
                    letters = await letters_of(transport, "g")
                    if letters:
                        break
                    await asyncio.sleep(0.01)
                assert len(letters) == 1
                letter = letters[0]
                assert letter.message_id == message_id
                assert letter.group == "g"
                assert letter.type == "contract.Tick"
                assert transport.codec.decode(letter.type, letter.payload) == Tick(7)
                assert letter.headers["tenant"] == "a"
                assert letter.error == "ValueError: bad amount 7"
                assert letter.handler == f"{__name__}.{charge.__qualname__}"
                assert letter.deliveries == 3
                assert await letters_of(transport, "other") == []

                broken["on"] = False
                await transport.requeue(letter)
                await wait_until(lambda: handled["g"] == [7], what="the requeued message")
                await asyncio.sleep(0.3)
                assert await letters_of(transport, "g") == []
        assert handled == {"g": [7], "other": [7]}

    run(main())


def test_unknown_type_and_undecodable_payload_go_straight_to_dead_letters(backend: Any, run: Any) -> None:
    seen: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tick(event: Tick) -> None:
        seen.append(event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", max_deliveries=5):
                garbage = await transport.publish_encoded("contract.Tick", b"{not json")
                wrong = await transport.publish_encoded("contract.Tick", b'{"m": 1}')
                future = await transport.publish_encoded("contract.Tick@9", b'{"n": 1}')
                await transport.publish(Tick(1))
                letters: List[DeadLetter] = []
                for _ in range(1000):
                    letters = await letters_of(transport, "g")
                    if len(letters) == 3 and seen:
                        break
                    await asyncio.sleep(0.01)
        assert seen == [1]
        by_id = {letter.message_id: letter for letter in letters}
        assert set(by_id) == {garbage, wrong, future}
        assert all(letter.deliveries == 1 and letter.handler is None for letter in letters)
        assert by_id[garbage].error.startswith("undecodable payload: 'contract.Tick'")
        assert by_id[wrong].error.startswith("undecodable payload: 'contract.Tick'")
        assert by_id[future].error.startswith("undecodable payload: 'contract.Tick@9'")  # a version from the future

    run(main())


def test_a_dead_consumers_message_is_reclaimed_after_claim_idle(backend: Any, run: Any) -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tick(event: Tick, headers: Dict[str, str]) -> None:
        seen.append(event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            worker = Worker(transport, bus, group="g", claim_idle=0.5, handle_signals=False)
            await worker.open()
            message_id = await transport.publish(Tick(3))
            # A consumer takes it and dies (never settles it).
            taken = await transport.fetch("g", "ghost", 10, 2.0)
            assert [delivery.message_id for delivery in taken] == [message_id]
            assert taken[0].deliveries == 1
            async with Running(transport, bus, group="g", claim_idle=0.5) as running:
                await wait_until(lambda: seen == [3], what="the reclaimed message")
                assert running.in_flight <= 1
            await worker.aclose()

    run(main())


def test_a_long_handler_keeps_its_claim(backend: Any, run: Any) -> None:
    runs: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def slow(event: Tick) -> None:
        runs.append(event.n)
        await asyncio.sleep(1.6)  # four times claim_idle

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", claim_idle=0.4, poll=0.1), Running(
                transport, bus, group="g", claim_idle=0.4, poll=0.1
            ):
                await transport.publish(Tick(5))
                await wait_until(lambda: runs == [5])
                await asyncio.sleep(2.0)
            assert await letters_of(transport, "g") == []
        assert runs == [5]

    run(main())


def test_graceful_close_finishes_in_flight_messages_and_acknowledges_them(backend: Any, run: Any) -> None:
    started: List[int] = []
    finished: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def slow(event: Tick) -> None:
        started.append(event.n)
        await asyncio.sleep(0.3)
        finished.append(event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            worker = Worker(transport, bus, group="g", concurrency=4, handle_signals=False, **FAST)
            await worker.open()
            task = asyncio.ensure_future(worker.run())
            for n in range(4):
                await transport.publish(Tick(n))
            await wait_until(lambda: len(started) == 4)
            await worker.aclose(timeout=5)
            await task
            assert sorted(finished) == [0, 1, 2, 3]
            # Acknowledged: nothing comes back, even once any claim would have expired.
            again: List[int] = []
            other = LocalEventBus()

            @other.register
            async def record(event: Tick) -> None:
                again.append(event.n)

            async with Running(transport, other, group="g", claim_idle=0.2):
                await asyncio.sleep(0.8)
            assert again == []

    run(main())


def test_messages_fetched_as_the_worker_closes_go_back_at_once(backend: Any, run: Any) -> None:
    seen: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tick(event: Tick) -> None:
        seen.append(event.n)

    async def main() -> None:
        async with backend.connect() as transport:
            worker = Worker(transport, bus, group="g", handle_signals=False, poll=2.0, claim_idle=30.0)
            await worker.open()
            task = asyncio.ensure_future(worker.run())
            await asyncio.sleep(0.3)  # the worker waits in a fetch
            closing = asyncio.ensure_future(worker.aclose(5))
            await asyncio.sleep(0.05)
            message_id = await transport.publish(Tick(4))  # the waiting fetch gets it
            await closing
            await task
            assert seen == []
            # Released: another consumer gets it now (not after claim_idle), not counted.
            again = await transport.fetch("g", "other", 10, 2.0)
            assert [(d.message_id, d.deliveries) for d in again] == [(message_id, 1)]

    run(main())


def test_close_timeout_cancels_without_acknowledging(backend: Any, run: Any) -> None:
    runs: List[int] = []
    cancelled: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def stuck(event: Tick, headers: Dict[str, str]) -> None:
        runs.append(event.n)
        if len(runs) == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(event.n)
                raise

    async def main() -> None:
        async with backend.connect() as transport:
            worker = Worker(transport, bus, group="g", handle_signals=False, **{**FAST, "claim_idle": 0.3})
            await worker.open()
            task = asyncio.ensure_future(worker.run())
            await transport.publish(Tick(9))
            await wait_until(lambda: runs == [9])
            await worker.aclose(timeout=0.1)
            await task
            assert cancelled == [9]
            # Not acknowledged: another worker gets it after claim_idle.
            async with Running(transport, bus, group="g", claim_idle=0.3):
                await wait_until(lambda: runs == [9, 9], what="the redelivery")

    run(main())


def test_never_more_than_concurrency_in_flight(backend: Any, run: Any) -> None:
    state = {"now": 0, "most": 0, "done": 0}
    bus = LocalEventBus()

    @bus.register
    async def busy(event: Tick) -> None:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        state["done"] += 1

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", concurrency=3) as worker:
                peak = 0
                for n in range(60):
                    await transport.publish(Tick(n))
                while state["done"] < 60:
                    peak = max(peak, worker.in_flight)
                    await asyncio.sleep(0.002)
        assert state["most"] == 3  # reached, never passed
        assert peak <= 3

    run(main())


def test_inbox_skips_a_message_id_already_processed(backend: Any, run: Any) -> None:
    seen: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tick(event: Tick) -> None:
        seen.append(event.n)

    async def main() -> None:
        inbox = MemoryInbox()
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g", inbox=inbox):
                first = await transport.publish(Tick(1), message_id="order-1")
                again = await transport.publish(Tick(1), message_id="order-1")
                await transport.publish(Tick(2))
                await wait_until(lambda: 2 in seen)
                await asyncio.sleep(0.3)
        assert first == again == "order-1"
        assert sorted(seen) == [1, 2]

    run(main())


def test_a_worker_consumes_only_its_bus_event_types(backend: Any, run: Any) -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_tock(event: Tock) -> None:
        seen.append(event)

    async def main() -> None:
        async with backend.connect() as transport:
            async with Running(transport, bus, group="g"):
                await transport.publish(Tick(1))
                await transport.publish(Tock(2))
                await wait_until(lambda: seen == [Tock(2)])
                await asyncio.sleep(0.2)
            assert await letters_of(transport, "g") == []
        assert seen == [Tock(2)]

    run(main())


def test_misuse_is_a_clear_error(backend: Any, run: Any) -> None:
    async def main() -> None:
        transport = backend.connect()
        async with transport:
            with pytest.raises(TypeError, match="headers must map str to str"):
                await transport.publish(Tick(1), headers={"n": 1})
            with pytest.raises(TypeError, match="key must be a str"):
                await transport.publish(Tick(1), key=7)
            with pytest.raises(ValueError, match="group must be"):
                Worker(transport, LocalEventBus(), group="bad group")
            with pytest.raises(ValueError, match="has no event handlers"):
                await Worker(transport, LocalEventBus(), group="g").open()
            with pytest.raises(ValueError, match="concurrency must be a positive int"):
                Worker(transport, LocalEventBus(), group="g", concurrency=0)
        with pytest.raises(TransportClosedError):
            await transport.publish(Tick(1))

    run(main())


def test_connect_rejects_an_unknown_scheme() -> None:
    with pytest.raises(UnsupportedURLError, match="kafka://"):
        connect("kafka://localhost")
