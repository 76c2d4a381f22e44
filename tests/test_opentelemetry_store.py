"""The trace context saved with events: a projection run by a ``Subscription`` links its
spans back to the command whose save recorded them."""

import asyncio
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mediator.event import LocalEventBus
from mediator.eventsourcing import Aggregate, Repository, Subscription, applies, open_store
from mediator.opentelemetry import instrument
from mediator.request import LocalRequestBus


@dataclass(frozen=True)
class CartOpened:
    owner: str


@dataclass(frozen=True)
class ItemAdded:
    sku: str


class Cart(Aggregate):
    @applies
    def _opened(self, event: CartOpened) -> None:
        self.owner, self.items = event.owner, []

    @applies
    def _added(self, event: ItemAdded) -> None:
        self.items.append(event.sku)


@dataclass
class OpenCart:
    owner: str


@pytest.fixture(autouse=True)
def no_opentelemetry_errors(caplog):
    """OpenTelemetry logs what it refuses (a context it cannot detach, a bad attribute):
    none of that may happen."""
    yield
    errors = [record.getMessage() for record in caplog.get_records("call") if record.name.startswith("opentelemetry")]
    assert not errors, errors


def w3c(span) -> str:
    """The ``traceparent`` header of ``span``."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request, tmp_path):
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_projection_links_back_to_the_command_that_saved_its_events(store_url, spans):
    provider, exporter = spans
    projected = []

    async def main():
        async with open_store(store_url) as store:
            carts = instrument(Repository(store))
            requests = LocalRequestBus()

            @requests.register
            async def open_cart(command: OpenCart) -> str:
                cart = Cart()
                cart.record(CartOpened(command.owner))
                cart.record(ItemAdded("apple"))
                await carts.save(cart, metadata={"user": "ann"})
                return cart.id

            instrument(requests, tracer_provider=provider)
            projections = LocalEventBus()

            @projections.register
            async def count_items(event: ItemAdded, recorded) -> None:
                projected.append(recorded.metadata)

            instrument(projections, tracer_provider=provider)
            cart_id = await requests.execute(OpenCart("ann"))
            assert await Subscription(store, projections, name="items").catch_up() == 2
            return [recorded.metadata async for recorded in store.read(cart_id)]

    stored = asyncio.run(main())
    (execute,) = [span for span in exporter.get_finished_spans() if span.name == "execute OpenCart"]
    traceparent = w3c(execute)
    assert [metadata["user"] for metadata in stored] == ["ann", "ann"]
    assert {metadata["traceparent"] for metadata in stored} == {traceparent}
    assert projected == [stored[1]]

    publishes = [span for span in exporter.get_finished_spans() if span.name.startswith("publish")]
    assert sorted(span.name for span in publishes) == ["publish CartOpened", "publish ItemAdded"]
    for span in publishes:  # a trace of its own, linked to the command's
        assert span.parent is None
        assert span.context.trace_id != execute.context.trace_id
        (link,) = span.links
        assert (link.context.trace_id, link.context.span_id) == (execute.context.trace_id, execute.context.span_id)
    (handle,) = [span for span in exporter.get_finished_spans() if span.name == "handle ItemAdded"]
    (publish_added,) = [span for span in publishes if span.name == "publish ItemAdded"]
    assert handle.parent.span_id == publish_added.context.span_id


def test_events_published_by_the_repository_hang_under_the_command(spans):
    """The store as the outbox: the events go on the bus after the commit, in the
    command's own trace."""
    provider, exporter = spans

    async def main():
        async with open_store("memory://") as store:
            events = LocalEventBus(strategy="sequential")

            @events.register
            async def greet(event: CartOpened) -> None:
                pass

            instrument(events, tracer_provider=provider)
            carts = instrument(Repository(store, bus=events))
            requests = LocalRequestBus()

            @requests.register
            async def open_cart(command: OpenCart) -> None:
                cart = Cart()
                cart.record(CartOpened(command.owner))
                await carts.save(cart)

            instrument(requests, tracer_provider=provider)
            await requests.execute(OpenCart("bob"))

    asyncio.run(main())
    by_name = {span.name: span for span in exporter.get_finished_spans()}
    execute, publish, handle = by_name["execute OpenCart"], by_name["publish CartOpened"], by_name["handle CartOpened"]
    assert publish.parent.span_id == execute.context.span_id
    assert handle.parent.span_id == publish.context.span_id


def test_store_append_saves_the_context_only_when_a_span_is_current(spans):
    provider, _ = spans
    tracer = provider.get_tracer("test")

    async def main():
        async with open_store("memory://") as store:
            instrument(store)
            with pytest.raises(ValueError, match="instrumented already"):
                instrument(store)
            await store.append("a", [CartOpened("x")], expected_version=0)
            with tracer.start_as_current_span("job") as span:
                await store.append("b", [CartOpened("y")], expected_version=0, metadata={"traceparent": "mine"})
                await store.append("c", [CartOpened("z")], expected_version=0)
            metadata = {}
            for stream in "abc":
                metadata[stream] = [recorded.metadata async for recorded in store.read(stream)][0]
            return metadata, span

    metadata, span = asyncio.run(main())
    assert metadata["a"] == {}
    assert metadata["b"] == {"traceparent": "mine"}  # the caller's own key wins
    assert metadata["c"] == {"traceparent": w3c(span)}


def test_a_relay_links_each_message_back_and_the_worker_continues_it(tmp_path, spans):
    """Store -> Relay -> broker -> Worker: the relay's producer span links to the command
    that saved the event; the worker's consumer span continues the relay's."""
    import uuid

    from mediator.transport import Relay, Worker, connect

    provider, exporter = spans
    handled = []

    async def main():
        async with open_store(f"sqlite:///{tmp_path / 'events.db'}") as store:
            carts = instrument(Repository(store))
            requests = LocalRequestBus()

            @requests.register
            async def open_cart(command: OpenCart) -> None:
                cart = Cart()
                cart.record(CartOpened(command.owner))
                await carts.save(cart)

            instrument(requests, tracer_provider=provider)
            await requests.execute(OpenCart("cy"))
            async with connect(f"memory://{uuid.uuid4().hex}") as transport:
                instrument(transport, tracer_provider=provider)
                billing = LocalEventBus()

                @billing.register
                async def bill(event: CartOpened) -> None:
                    handled.append(event)

                async with Worker(transport, billing, group="billing", start="earliest") as worker:
                    instrument(worker, tracer_provider=provider)
                    assert await Relay(store, transport, name="to-broker").catch_up() == 1
                    task = asyncio.ensure_future(worker.run())
                    while not handled:
                        await asyncio.sleep(0.01)
                    await worker.aclose()
                    await task

    asyncio.run(main())
    finished = exporter.get_finished_spans()
    (execute,) = [span for span in finished if span.name == "execute OpenCart"]
    (producer,) = [span for span in finished if span.kind is SpanKind.PRODUCER]
    (consumer,) = [span for span in finished if span.kind is SpanKind.CONSUMER]
    assert producer.parent is None  # the relay's own trace...
    (link,) = producer.links  # ...linked to the command's
    assert (link.context.trace_id, link.context.span_id) == (execute.context.trace_id, execute.context.span_id)
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes["mediator.outcome"] == "ok"
