"""Redis-only behaviour: the Redis inbox, options from the URL, and the stream layout."""

import asyncio
from dataclasses import dataclass
from typing import Any, List

import pytest

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.transport import Worker, connect
from mediator.transport.inbox import RedisInbox


@event_type("redis.Paid")
@dataclass(frozen=True)
class Paid:
    n: int


def test_redis_inbox_skips_a_processed_message_id_across_workers(redis_url: str, run: Any) -> None:
    import redis

    seen: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def on_paid(event: Paid) -> None:
        seen.append(event.n)

    async def consume(ttl: int) -> None:
        async with connect(redis_url) as transport:
            worker = Worker(
                transport, bus, group="g", inbox=RedisInbox(transport, ttl=ttl), handle_signals=False, poll=0.1,
                start="earliest",
            )
            async with worker:
                task = asyncio.ensure_future(worker.run())
                await transport.publish(Paid(1), message_id="pay-1")
                await transport.publish(Paid(1), message_id="pay-1")  # the publisher retried
                await transport.publish(Paid(2), message_id="pay-2")
                for _ in range(500):
                    if 2 in seen:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
                await worker.aclose(5)
                await task

    run(consume(ttl=3600))
    assert sorted(seen) == [1, 2]
    prefix = redis_url.rsplit("prefix=", 1)[1]
    client = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        assert 0 < client.ttl(f"{prefix}:inbox:g:pay-1") <= 3600
    finally:
        client.close()


def test_url_options_and_clear_errors(redis_url: str, run: Any) -> None:
    from mediator.transport.redis import RedisTransport

    transport = connect(redis_url + "&maxlen=500")
    assert isinstance(transport, RedisTransport)
    assert transport.maxlen == 500 and transport.prefix == redis_url.rsplit("prefix=", 1)[1]
    assert "prefix" not in transport.url and "maxlen" not in transport.url
    with pytest.raises(ValueError, match="maxlen must be"):
        RedisTransport(redis_url, maxlen=-5)
    with pytest.raises(TypeError, match="RedisInbox needs a RedisTransport"):
        RedisInbox(connect("memory://"))  # type: ignore[arg-type]

    async def unreachable() -> None:
        from mediator.transport import TransportConnectionError

        lost = RedisTransport("redis://127.0.0.1:1/0", reconnect_timeout=0.3)
        with pytest.raises(TransportConnectionError, match="could not connect"):
            await lost.open()
        await lost.close()

    run(unreachable())
