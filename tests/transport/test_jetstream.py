"""What only the JetStream transport does (the contract suite covers the rest): the
message id as JetStream's deduplication id, messages that other clients put on the
stream, type strings that are not subject tokens, and the URL's options.

Every test uses the machine's NATS (127.0.0.1:4222, or MEDIATOR_TEST_NATS) with a stream
prefix of its own, and fails when NATS is not there.
"""

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any, List

import nats
import pytest

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.transport import DeadLetter, Worker, connect
from mediator.transport.jetstream import JetStreamTransport

NATS_URL = os.environ.get("MEDIATOR_TEST_NATS", "nats://127.0.0.1:4222")


@event_type("jetstream.Ping")
@dataclass(frozen=True)
class Ping:
    n: int


def transport_for_test(**options: Any) -> JetStreamTransport:
    return JetStreamTransport(NATS_URL, prefix="mtj" + uuid.uuid4().hex[:12], reconnect_timeout=10, **options)


def run(coroutine: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, 60)

    return asyncio.run(bounded())


async def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def letters_of(transport: Any, group: str) -> List[DeadLetter]:
    return [letter async for letter in transport.dead_letters(group)]


def test_a_message_id_published_twice_is_stored_and_handled_once() -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_ping(event: Ping, message_id: str) -> None:
        seen.append((event.n, message_id))

    async def main() -> None:
        async with transport_for_test() as transport:
            try:
                worker = Worker(transport, bus, group="g", poll=0.2, handle_signals=False)
                async with worker:
                    running = asyncio.ensure_future(worker.run())
                    first = await transport.publish(Ping(1), message_id="order-7")
                    again = await transport.publish(Ping(1), message_id="order-7")  # a retry after a lost PubAck
                    await transport.publish(Ping(2), message_id="order-8")
                    await wait_until(lambda: len(seen) >= 2, "both messages")
                    await asyncio.sleep(0.3)  # room for a duplicate, if one had been stored
                    await worker.aclose(5)
                    await running
                assert first == again == "order-7"
                assert sorted(seen) == [(1, "order-7"), (2, "order-8")]
                info = await transport._js.stream_info(transport.stream)
                assert info.state.messages == 2
            finally:
                await transport.destroy()

    run(main())


def test_messages_other_clients_put_on_the_stream_are_handled_or_dead_lettered_never_looped() -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_ping(event: Ping, message_id: str) -> None:
        seen.append((event.n, message_id))

    async def main() -> None:
        async with transport_for_test() as transport:
            try:
                worker = Worker(transport, bus, group="g", poll=0.2, handle_signals=False)
                async with worker:
                    running = asyncio.ensure_future(worker.run())
                    client = await nats.connect(NATS_URL)
                    js = client.jetstream()
                    prefix = transport.prefix
                    plain = await js.publish(f"{prefix}.e.jetstream_2EPing.n", b'{"n": 5}')  # no headers at all
                    await js.publish(f"{prefix}.e.jetstream_2EPing.v_ZZ", b'{"n": 6}')  # not an escape
                    await js.publish(f"{prefix}.e.jetstream_2EPing.x", b'{"n": 7}')  # not a version token
                    await client.close()
                    await transport.publish(Ping(8), message_id="after")
                    letters: List[DeadLetter] = []

                    def settled() -> bool:
                        return len(seen) == 2 and len(letters) == 2

                    for _ in range(500):
                        letters = await letters_of(transport, "g")
                        if settled():
                            break
                        await asyncio.sleep(0.02)
                    await worker.aclose(5)
                    await running
                assert sorted(seen) == [(5, f"{transport.stream}:{plain.seq}"), (8, "after")]
                assert len(letters) == 2
                assert all(letter.error.startswith("unreadable message on ") for letter in letters)
                assert {letter.payload for letter in letters} == {b'{"n": 6}', b'{"n": 7}'}
                assert await transport.pending("g") == 0
            finally:
                await transport.destroy()

    run(main())


def test_type_strings_that_are_not_subject_tokens_round_trip() -> None:
    async def main() -> None:
        async with transport_for_test() as transport:
            try:
                odd = ["app.<locals>.Thing@2", "a b*c>d", "ünïcode.Évent", "x_2Ey", "dash-and_underscore"]
                await transport.ensure_group("g", odd, start="earliest", claim_idle=5.0)
                for type_string in odd:
                    await transport.publish_encoded(type_string, b"{}")
                got = []
                while len(got) < len(odd):
                    batch = await transport.fetch("g", "c", 10, 2.0)
                    assert batch, "the messages did not arrive"
                    got += batch
                await transport.ack(got)
                assert sorted(delivery.type for delivery in got) == sorted(odd)  # one consumer per family
            finally:
                await transport.destroy()

    run(main())


def test_url_options_and_bad_options_are_clear() -> None:
    transport = connect(f"{NATS_URL}?prefix=custom_1&maxlen=10")
    assert isinstance(transport, JetStreamTransport)
    assert (transport.prefix, transport.maxlen, transport.stream) == ("custom_1", 10, "custom_1_events")
    with pytest.raises(ValueError, match="unknown option.*'bogus'"):
        connect(f"{NATS_URL}?bogus=1")
    with pytest.raises(ValueError, match="prefix must be"):
        connect(f"{NATS_URL}?prefix=a.b")
    with pytest.raises(ValueError, match="JetStream message id"):
        run(publish_with_id("two words"))


async def publish_with_id(message_id: str) -> None:
    async with transport_for_test() as transport:
        try:
            await transport.publish(Ping(1), message_id=message_id)
        finally:
            await transport.destroy()


def test_fetching_for_a_group_the_server_does_not_have_is_an_error_not_a_silent_wait() -> None:
    from mediator.transport import ConsumerGroupError

    async def main() -> None:
        async with transport_for_test() as transport:
            try:
                with pytest.raises(ConsumerGroupError, match="no consumer group 'nobody'"):
                    await transport.fetch("nobody", "c", 10, 0.3)
                # A group deleted under a running worker: the server ignores pull requests for
                # a consumer it does not have, so the first fetch just times out and the next
                # one asks why and says so.
                await transport.ensure_group("gone", ["jetstream.Ping"], start="latest", claim_idle=5.0)
                for info in await transport._js.consumers_info(transport.stream):
                    await transport._js.delete_consumer(transport.stream, info.name)
                assert await transport.fetch("gone", "c", 10, 0.3) == []
                with pytest.raises(ConsumerGroupError, match="no consumer .* of the group 'gone'"):
                    await transport.fetch("gone", "c", 10, 0.3)
            finally:
                await transport.destroy()

    run(main())


def test_the_stream_keeps_at_most_maxlen_messages_per_type() -> None:
    async def main() -> None:
        async with transport_for_test(maxlen=300) as transport:
            try:
                for start in range(0, 1_000, 100):
                    await asyncio.gather(*(transport.publish(Ping(n)) for n in range(start, start + 100)))
                info = await transport._js.stream_info(transport.stream)
                assert info.state.messages == 300
                assert info.state.last_seq == 1_000
            finally:
                await transport.destroy()

    run(main())


@event_type("jetstream.Pong")
@dataclass(frozen=True)
class Pong:
    n: int


def test_a_worker_of_the_group_without_a_type_leaves_its_messages_to_the_workers_with_it() -> None:
    """A rolling deploy: the new workers of a group handle a new type, the old ones do not
    know it. The old ones must not take (and drop) its messages."""
    old_bus, new_bus = LocalEventBus(), LocalEventBus()
    pongs: List[int] = []

    @old_bus.register
    async def old_ping(event: Ping) -> None:
        pass

    @new_bus.register
    async def new_ping(event: Ping) -> None:
        pass

    @new_bus.register
    async def new_pong(event: Pong) -> None:
        pongs.append(event.n)

    async def main() -> None:
        prefix = "mtj" + uuid.uuid4().hex[:12]
        async with JetStreamTransport(NATS_URL, prefix=prefix) as old, JetStreamTransport(NATS_URL, prefix=prefix) as new:
            try:
                workers = [
                    Worker(old, old_bus, group="g", poll=0.2, handle_signals=False),
                    Worker(new, new_bus, group="g", poll=0.2, handle_signals=False),
                ]
                for worker in workers:
                    await worker.open()
                running = [asyncio.ensure_future(worker.run()) for worker in workers]
                for n in range(40):
                    await new.publish(Pong(n))
                await wait_until(lambda: len(pongs) == 40, "every Pong handled by the new worker")
                for worker in workers:
                    await worker.aclose(5)
                await asyncio.gather(*running)
                assert sorted(pongs) == list(range(40))
                assert await letters_of(new, "g") == []
            finally:
                await new.destroy()

    run(main())


def test_publish_many_stores_each_once_in_order_and_deduplicates_given_ids() -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_ping(event: Ping, message_id: str) -> None:
        seen.append((event.n, message_id))

    async def main() -> None:
        async with transport_for_test() as transport:
            try:
                worker = Worker(transport, bus, group="g", poll=0.2, handle_signals=False)
                async with worker:
                    running = asyncio.ensure_future(worker.run())
                    ids = await transport.publish_many([Ping(n) for n in range(300)])
                    assert len(set(ids)) == 300
                    encoded = [transport.codec.encode(Ping(n)) for n in range(300, 310)]
                    given = [f"order-{n}" for n in range(300, 310)]
                    assert await transport.publish_many_encoded(encoded, message_ids=given) == given
                    assert await transport.publish_many_encoded(encoded, message_ids=given) == given  # a retry
                    await wait_until(lambda: len(seen) >= 310, "every message")
                    await asyncio.sleep(0.3)  # room for a duplicate, if one had been stored
                    await worker.aclose(5)
                    await running
                assert sorted(seen) == sorted(list(zip(range(300), ids)) + list(zip(range(300, 310), given)))
                info = await transport._js.stream_info(transport.stream)
                assert info.state.messages == 310
            finally:
                await transport.destroy()

    run(main())
