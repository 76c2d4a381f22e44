"""``mediator.opentelemetry``: spans and metrics of requests and events, through the SDK's
in-memory span exporter and metric reader."""

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from mediator import Hook
from mediator.errors import EventHandlerErrors
from mediator.event import LocalEventBus
from mediator.opentelemetry import Tracing, instrument
from mediator.request import LocalRequestBus


@dataclass
class PlaceOrder:
    order_id: int


@dataclass
class OrderPlaced:
    order_id: int


@pytest.fixture(autouse=True)
def no_opentelemetry_errors(caplog):
    """OpenTelemetry logs what it refuses (a context it cannot detach, a bad attribute):
    none of that may happen."""
    yield
    errors = [record.getMessage() for record in caplog.get_records("call") if record.name.startswith("opentelemetry")]
    assert not errors, errors


class Telemetry:
    """An SDK tracer provider and meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("test")

    def instrument(self, bus: Any, **kwargs: Any) -> Tracing:
        return instrument(bus, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs)

    def spans(self, name: str = "") -> List[Any]:
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith(name)]

    def points(self, metric: str) -> List[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


def parent_of(span: Any) -> Any:
    return span.parent.span_id if span.parent is not None else None


def test_importing_mediator_imports_no_opentelemetry():
    """The core stays free of it: only ``import mediator.opentelemetry`` loads it."""
    code = (
        "import sys, mediator, mediator.request, mediator.event, mediator.modifiers, mediator.codec\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] == 'opentelemetry')\n"
        "assert not loaded, loaded\n"
        "import mediator.opentelemetry\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_execute_span_is_a_child_of_the_callers_span(telemetry):
    bus = LocalRequestBus()

    @bus.register
    async def place_order(command: PlaceOrder) -> int:
        # the handler runs inside the execute span
        return trace.get_current_span().get_span_context().span_id

    telemetry.instrument(bus)

    async def main():
        with telemetry.tracer.start_as_current_span("http request") as outer:
            inner = await bus.execute(PlaceOrder(7))
            assert trace.get_current_span() is outer  # the execute span is not left current
        return inner

    inner = asyncio.run(main())
    (execute,) = telemetry.spans("execute")
    (outer,) = telemetry.spans("http request")
    assert execute.name == "execute PlaceOrder"
    assert execute.context.span_id == inner
    assert parent_of(execute) == outer.context.span_id
    assert execute.context.trace_id == outer.context.trace_id
    assert execute.kind is trace.SpanKind.INTERNAL
    assert dict(execute.attributes) == {
        "mediator.operation": "execute",
        "mediator.message": f"{__name__}.PlaceOrder",
        "mediator.handler": f"{__name__}.{place_order.__qualname__}",
        "mediator.outcome": "ok",
    }
    assert execute.status.status_code is StatusCode.UNSET


def test_a_failure_is_recorded_on_the_span_and_counted(telemetry):
    bus = LocalRequestBus()

    @bus.register
    async def place_order(command: PlaceOrder) -> None:
        raise ValueError("out of stock")

    telemetry.instrument(bus)
    with pytest.raises(ValueError, match="out of stock"):
        asyncio.run(bus.execute(PlaceOrder(1)))
    (span,) = telemetry.spans("execute")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: out of stock"
    assert span.attributes["mediator.outcome"] == "error"
    assert span.attributes["error.type"] == "ValueError"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "out of stock"
    (failures,) = telemetry.points("mediator.handler.failures")
    assert failures.value == 1
    assert failures.attributes["mediator.handler"].endswith("place_order")
    assert failures.attributes["error.type"] == "ValueError"
    (duration,) = telemetry.points("mediator.dispatch.duration")
    assert duration.count == 1 and duration.attributes["mediator.outcome"] == "error"


def test_a_cancelled_dispatch_ends_its_span_and_leaves_the_callers_context(telemetry):
    bus = LocalRequestBus()
    started = []

    @bus.register
    async def place_order(command: PlaceOrder) -> None:
        started.append(True)
        await asyncio.sleep(3600)

    telemetry.instrument(bus)
    current_after_cancel = []

    async def caller(direct: bool) -> None:
        with telemetry.tracer.start_as_current_span("caller") as span:
            try:
                if direct:  # awaited in the caller's own task
                    await bus.execute(PlaceOrder(1))
                else:
                    await asyncio.ensure_future(bus.execute(PlaceOrder(2)))
            finally:
                current_after_cancel.append(trace.get_current_span() is span)

    async def main():
        for direct in (True, False):
            started.clear()
            task = asyncio.ensure_future(caller(direct))
            while not started:
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert current_after_cancel == [True, True]
    spans = telemetry.spans("execute")
    assert len(spans) == 2
    assert [span.attributes["mediator.outcome"] for span in spans] == ["cancelled", "cancelled"]
    assert all(span.status.status_code is StatusCode.UNSET for span in spans)
    assert telemetry.points("mediator.handler.failures") == []


@pytest.mark.parametrize("strategy", ["background", "concurrent", "sequential"])
def test_an_event_fan_out_hangs_under_its_publish_span_under_the_command(telemetry, strategy):
    requests = LocalRequestBus()
    events = LocalEventBus(strategy=strategy)
    seen: Dict[str, int] = {}

    @requests.register
    async def place_order(command: PlaceOrder) -> None:
        await events.publish(OrderPlaced(command.order_id))

    for name in ("bill", "ship", "email"):

        async def handler(event: OrderPlaced, name: str = name) -> None:
            await asyncio.sleep(0)
            seen[name] = trace.get_current_span().get_span_context().span_id

        handler.__qualname__ = name
        events.register(handler)

    telemetry.instrument(requests)
    telemetry.instrument(events)

    async def main():
        await requests.execute(PlaceOrder(3))
        await events.drain()

    asyncio.run(main())
    (execute,) = telemetry.spans("execute")
    (publish,) = telemetry.spans("publish")
    handles = telemetry.spans("handle")
    assert publish.name == "publish OrderPlaced"
    assert parent_of(publish) == execute.context.span_id
    assert sorted(span.attributes["mediator.handler"].rsplit(".", 1)[1] for span in handles) == ["bill", "email", "ship"]
    assert {parent_of(span) for span in handles} == {publish.context.span_id}
    assert {span.context.trace_id for span in (execute, publish, *handles)} == {execute.context.trace_id}
    assert {span.context.span_id for span in handles} == set(seen.values())
    assert all(span.name == "handle OrderPlaced" and span.attributes["mediator.outcome"] == "ok" for span in handles)


def test_a_failing_event_handler_marks_its_span_and_the_awaited_publish(telemetry):
    events = LocalEventBus(strategy="concurrent")

    @events.register
    async def fine(event: OrderPlaced) -> None:
        pass

    @events.register
    async def broken(event: OrderPlaced) -> None:
        raise KeyError("no such order")

    telemetry.instrument(events)
    with pytest.raises(EventHandlerErrors):
        asyncio.run(events.publish(OrderPlaced(1)))
    by_handler = {span.attributes["mediator.handler"].rsplit(".", 1)[1]: span for span in telemetry.spans("handle")}
    assert by_handler["fine"].status.status_code is StatusCode.UNSET
    assert by_handler["broken"].status.status_code is StatusCode.ERROR
    (publish,) = telemetry.spans("publish")
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.attributes["mediator.outcome"] == "error"
    (failures,) = telemetry.points("mediator.handler.failures")
    assert failures.value == 1 and failures.attributes["mediator.handler"].endswith("broken")


def test_gathered_dispatches_each_get_their_own_span(telemetry):
    bus = LocalRequestBus()

    @bus.register
    async def place_order(command: PlaceOrder) -> Any:
        await asyncio.sleep(0)  # the others run meanwhile
        return command.order_id, trace.get_current_span().get_span_context().span_id

    telemetry.instrument(bus)

    async def main():
        return await asyncio.gather(*(bus.execute(PlaceOrder(n)) for n in range(5)))

    results = asyncio.run(main())
    spans = telemetry.spans("execute")
    assert len(spans) == 5
    assert sorted(span_id for _, span_id in results) == sorted(span.context.span_id for span in spans)
    assert {parent_of(span) for span in spans} == {None}


def test_pending_gauge_reads_the_background_runs_in_flight(telemetry):
    events = LocalEventBus()
    release = None

    @events.register
    async def slow(event: OrderPlaced) -> None:
        await release.wait()

    telemetry.instrument(events, name="orders")

    async def main():
        nonlocal release
        release = asyncio.Event()
        for n in range(3):
            await events.publish(OrderPlaced(n))
        await asyncio.sleep(0)
        (during,) = telemetry.points("mediator.event.pending")
        release.set()
        await events.drain()
        (after,) = telemetry.points("mediator.event.pending")
        return during, after

    during, after = asyncio.run(main())
    assert during.attributes == {"mediator.bus": "orders"}
    assert during.value == 3
    assert after.value == 0
    durations = [point for point in telemetry.points("mediator.dispatch.duration")]
    counts = {point.attributes["mediator.operation"]: point.count for point in durations}
    assert counts == {"publish": 3, "handle": 3}


def test_instrument_covers_handlers_registered_before_and_after(telemetry):
    bus = LocalRequestBus()

    @bus.register
    async def before(command: PlaceOrder) -> None:
        pass

    telemetry.instrument(bus)

    @bus.register
    async def after(command: OrderPlaced) -> None:
        pass

    async def main():
        await bus.execute(PlaceOrder(1))
        await bus.execute(OrderPlaced(1))

    asyncio.run(main())
    assert sorted(span.name for span in telemetry.spans()) == ["execute OrderPlaced", "execute PlaceOrder"]


def test_tracing_is_outside_the_buses_own_modifiers(telemetry):
    """The bus's hooks run inside the span: a hook's log line can carry the trace id."""
    seen = []

    def before(subject, inject):
        seen.append(trace.get_current_span().get_span_context().span_id)

    bus = LocalRequestBus(modifiers=[Hook(before=before)])

    @bus.register
    async def place_order(command: PlaceOrder) -> None:
        pass

    telemetry.instrument(bus)
    asyncio.run(bus.execute(PlaceOrder(1)))
    (span,) = telemetry.spans()
    assert seen == [span.context.span_id]


def test_tracing_in_modifiers(telemetry):
    tracing = Tracing(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    events = LocalEventBus(strategy="sequential", modifiers=[tracing])

    @events.register
    def audit(event: OrderPlaced) -> None:  # a plain def handler
        pass

    asyncio.run(events.publish(OrderPlaced(1)))
    (span,) = telemetry.spans()
    assert span.name == "handle OrderPlaced"
    assert span.attributes["mediator.handler"].endswith("audit")


def test_instrument_refuses_twice_and_other_objects(telemetry):
    bus = LocalRequestBus()
    telemetry.instrument(bus)
    with pytest.raises(ValueError, match="instrumented already"):
        telemetry.instrument(bus)
    with pytest.raises(TypeError, match="takes a bus, a transport"):
        telemetry.instrument(object())
    with pytest.raises(ValueError, match="operation"):
        Tracing(operation="")
