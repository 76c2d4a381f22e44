"""Traces across the process boundary: ``transport.publish`` puts the W3C trace context in
the message headers and an instrumented ``Worker`` continues it (messaging semantic
conventions), in another process, on the real Redis; the transport counters."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mediator.event import LocalEventBus
from mediator.opentelemetry import instrument
from mediator.request import LocalRequestBus

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from otel_worker_app import Rejected, Shipped  # noqa: E402

REDIS_URL = os.environ.get("MEDIATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def no_opentelemetry_errors(caplog):
    """OpenTelemetry logs what it refuses (a context it cannot detach, a bad attribute):
    none of that may happen."""
    yield
    errors = [record.getMessage() for record in caplog.get_records("call") if record.name.startswith("opentelemetry")]
    assert not errors, errors


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("test")

    def instrument(self, obj, **kwargs):
        return instrument(obj, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs)

    def spans(self, name=""):
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith(name)]

    def counter(self, name):
        data = self.reader.get_metrics_data()
        total = 0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        total += sum(point.value for point in metric.data.data_points)
        return total


def hex_id(value: int, digits: int) -> str:
    return "0x" + format(value, f"0{digits}x")


def read_spans(path):
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def test_a_trace_crosses_to_a_worker_process_on_redis(tmp_path):
    telemetry = Telemetry()
    prefix = f"test-otel-{uuid.uuid4().hex[:12]}"
    spans_path, metrics_path = str(tmp_path / "spans.jsonl"), str(tmp_path / "metrics.json")
    worker = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "otel_worker_app.py"), "--url", REDIS_URL, "--prefix", prefix,
         "--group", "shipping", "--spans", spans_path, "--metrics", metrics_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        requests = LocalRequestBus()

        async def main():
            from mediator.transport import connect

            async with connect(REDIS_URL, prefix=prefix) as transport:
                telemetry.instrument(transport)

                @requests.register
                async def ship(order: Shipped) -> str:
                    return await transport.publish(order, key=str(order.order_id))

                telemetry.instrument(requests)
                with telemetry.tracer.start_as_current_span("http request"):
                    shipped = await requests.execute(Shipped(7))
                rejected = await transport.publish(Rejected(8))
                return shipped, rejected

        shipped_id, rejected_id = asyncio.run(main())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the worker's spans: the handler's, twice the refusal's
            names = [span["name"] for span in read_spans(spans_path)]
            if names.count("handle Shipped") == 1 and names.count("process test.otel.Rejected") == 2:
                break
            assert worker.poll() is None, worker.stderr.read()
            time.sleep(0.05)
        else:
            pytest.fail(f"the worker did not handle both messages: {read_spans(spans_path)}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, worker.stderr.read()

    (request,) = telemetry.spans("http request")
    (execute,) = telemetry.spans("execute")
    producers = {span.attributes["messaging.destination.name"]: span for span in telemetry.spans("publish test.otel")}
    producer = producers["test.otel.Shipped"]
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent.span_id == execute.context.span_id
    assert execute.parent.span_id == request.context.span_id
    assert dict(producer.attributes) == {
        "messaging.system": "redis",
        "messaging.destination.name": "test.otel.Shipped",
        "messaging.operation": "publish",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.message.id": shipped_id,
        "mediator.outcome": "ok",
    }

    remote = read_spans(spans_path)
    by_id = {span["context"]["span_id"]: span for span in remote}
    (consumer,) = [span for span in remote if span["name"] == "process test.otel.Shipped"]
    assert consumer["kind"] == "SpanKind.CONSUMER"
    trace_id = hex_id(request.context.trace_id, 32)
    assert consumer["context"]["trace_id"] == trace_id  # the publisher's trace, continued
    assert consumer["parent_id"] == hex_id(producer.context.span_id, 16)
    attributes = consumer["attributes"]
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == "test.otel.Shipped"
    assert attributes["messaging.operation"] == "process"
    assert attributes["messaging.message.id"] == shipped_id
    assert attributes["messaging.consumer.group.name"] == "shipping"
    assert attributes["mediator.outcome"] == "ok"
    (handle,) = [span for span in remote if span["name"] == "handle Shipped"]
    publish = by_id[handle["parent_id"]]  # the worker's bus: its publish span, then the handler's
    assert publish["name"] == "publish Shipped"
    assert publish["parent_id"] == consumer["context"]["span_id"]
    assert handle["context"]["trace_id"] == trace_id

    refusals = sorted(
        (span for span in remote if span["name"] == "process test.otel.Rejected"),
        key=lambda span: span["attributes"]["mediator.deliveries"],
    )
    assert [span["attributes"]["mediator.outcome"] for span in refusals] == ["retried", "dead_lettered"]
    assert all(span["status"]["status_code"] == "ERROR" for span in refusals)
    assert all(span["attributes"]["messaging.message.id"] == rejected_id for span in refusals)
    rejected_producer = producers["test.otel.Rejected"]
    assert {span["parent_id"] for span in refusals} == {hex_id(rejected_producer.context.span_id, 16)}

    with open(metrics_path) as counts:
        assert json.load(counts) == {
            "mediator.transport.consumed test.otel.Shipped": 1,
            "mediator.transport.consumed test.otel.Rejected": 2,
            "mediator.transport.redelivered test.otel.Rejected": 1,
            "mediator.transport.dead_lettered test.otel.Rejected": 1,
        }


def test_worker_counters_and_outcomes_on_the_memory_transport():
    from mediator.transport import Worker, connect

    telemetry = Telemetry()
    bus = LocalEventBus()
    handled = []

    @bus.register
    async def notify(event: Shipped, headers: dict) -> None:
        handled.append(headers)

    @bus.register
    async def refuse(event: Rejected) -> None:
        raise ValueError("refused")

    async def main():
        async with connect(f"memory://{uuid.uuid4().hex}") as transport:
            telemetry.instrument(transport)
            async with Worker(transport, bus, group="g", start="earliest", max_deliveries=3, backoff=0.01) as worker:
                telemetry.instrument(worker)
                with telemetry.tracer.start_as_current_span("caller"):
                    await transport.publish(Shipped(1), headers={"tenant": "a"})
                    await transport.publish(Rejected(2))
                task = asyncio.ensure_future(worker.run())
                while telemetry.counter("mediator.transport.dead_lettered") < 1 or not handled:
                    await asyncio.sleep(0.01)
                await worker.aclose()
                await task

    asyncio.run(main())
    assert telemetry.counter("mediator.transport.consumed") == 4  # 1 + 3 deliveries
    assert telemetry.counter("mediator.transport.redelivered") == 2
    assert telemetry.counter("mediator.transport.dead_lettered") == 1
    (headers,) = handled
    assert headers["tenant"] == "a" and headers["traceparent"].startswith("00-")
    (caller,) = telemetry.spans("caller")
    assert headers["traceparent"].split("-")[1] == format(caller.context.trace_id, "032x")
    outcomes = sorted(span.attributes["mediator.outcome"] for span in telemetry.spans("process"))
    assert outcomes == ["dead_lettered", "ok", "retried", "retried"]
    assert bus.publish.__wrapped__  # instrument(worker) instrumented its bus too
    assert {span.status.status_code for span in telemetry.spans("process test.otel.Rejected")} == {StatusCode.ERROR}


def test_a_publish_outside_any_span_starts_a_trace_the_worker_continues():
    from mediator.transport import Worker, connect

    telemetry = Telemetry()
    bus = LocalEventBus()
    seen = []

    @bus.register
    async def notify(event: Shipped) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    async def main():
        async with connect(f"memory://{uuid.uuid4().hex}") as transport:
            telemetry.instrument(transport)
            async with Worker(transport, bus, group="g", start="earliest") as worker:
                telemetry.instrument(worker)
                await transport.publish(Shipped(1))
                task = asyncio.ensure_future(worker.run())
                while not seen:
                    await asyncio.sleep(0.01)
                await worker.aclose()
                await task

    asyncio.run(main())
    (producer,) = telemetry.spans("publish test.otel")
    assert producer.parent is None
    assert seen == [producer.context.trace_id]


def test_an_instrumented_bus_continues_the_trace_under_a_worker_that_is_not():
    """``python -m mediator.worker app:bus`` builds its own Worker: instrumenting the bus in
    the app is enough for its spans to continue the publisher's trace."""
    from mediator.transport import Worker, connect

    telemetry = Telemetry()
    bus = LocalEventBus()
    seen = []

    @bus.register
    async def notify(event: Shipped) -> None:
        seen.append(trace.get_current_span().get_span_context())

    telemetry.instrument(bus)

    async def main():
        async with connect(f"memory://{uuid.uuid4().hex}") as transport:
            telemetry.instrument(transport)
            async with Worker(transport, bus, group="g", start="earliest") as worker:
                await transport.publish(Shipped(1))
                task = asyncio.ensure_future(worker.run())
                while not seen:
                    await asyncio.sleep(0.01)
                await worker.aclose()
                await task

    asyncio.run(main())
    (producer,) = [span for span in telemetry.spans() if span.kind is SpanKind.PRODUCER]
    (publish,) = telemetry.spans("publish Shipped")
    (handle,) = telemetry.spans("handle Shipped")
    assert publish.parent.span_id == producer.context.span_id
    assert handle.parent.span_id == publish.context.span_id
    assert seen[0].trace_id == producer.context.trace_id


def test_publish_many_gives_each_message_its_producer_span():
    from mediator.transport import Worker, connect

    telemetry = Telemetry()
    bus = LocalEventBus()
    seen = []

    @bus.register
    async def notify(event: Shipped) -> None:
        seen.append(event.order_id)

    async def main():
        async with connect(f"memory://{uuid.uuid4().hex}") as transport:
            telemetry.instrument(transport)
            async with Worker(transport, bus, group="g", start="earliest") as worker:
                telemetry.instrument(worker)
                with telemetry.tracer.start_as_current_span("batch job"):
                    ids = await transport.publish_many([Shipped(1), Shipped(2)], headers={"tenant": "a"})
                task = asyncio.ensure_future(worker.run())
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
                await worker.aclose()
                await task
                return ids

    ids = asyncio.run(main())
    (job,) = telemetry.spans("batch job")
    producers = {span.attributes["messaging.message.id"]: span for span in telemetry.spans() if span.kind is SpanKind.PRODUCER}
    consumers = {span.attributes["messaging.message.id"]: span for span in telemetry.spans() if span.kind is SpanKind.CONSUMER}
    assert sorted(producers) == sorted(consumers) == sorted(ids)
    for message_id in ids:
        assert producers[message_id].parent.span_id == job.context.span_id
        assert consumers[message_id].parent.span_id == producers[message_id].context.span_id


def test_the_worker_command_line_traces_with_opentelemetry(tmp_path):
    """``python -m mediator.worker MODULE:BUS --opentelemetry``: the module sets the global
    providers up; the worker continues the publisher's trace on the real Redis."""
    telemetry = Telemetry()
    prefix = f"test-otel-cli-{uuid.uuid4().hex[:12]}"
    spans_path = str(tmp_path / "spans.jsonl")
    worker = subprocess.Popen(
        [sys.executable, "-m", "mediator.worker", "otel_worker_app:bus", "--url", f"{REDIS_URL}?prefix={prefix}",
         "--group", "cli", "--start", "earliest", "--opentelemetry", "--log-level", "WARNING"],
        cwd=HERE,
        env={**os.environ, "OTEL_TEST_SPANS": spans_path},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def publish():
            from mediator.transport import connect

            async with connect(REDIS_URL, prefix=prefix) as transport:
                telemetry.instrument(transport)
                return await transport.publish(Shipped(3))

        message_id = asyncio.run(publish())
        deadline = time.monotonic() + 60
        while not any(span["name"] == "handle Shipped" for span in read_spans(spans_path)):
            assert worker.poll() is None, worker.stderr.read()
            assert time.monotonic() < deadline, "the worker did not handle the message"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, worker.stderr.read()
    (producer,) = [span for span in telemetry.spans() if span.kind is SpanKind.PRODUCER]
    (consumer,) = [span for span in read_spans(spans_path) if span["kind"] == "SpanKind.CONSUMER"]
    assert consumer["parent_id"] == hex_id(producer.context.span_id, 16)
    assert consumer["attributes"]["messaging.message.id"] == message_id
