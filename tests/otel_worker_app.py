"""A worker process for test_opentelemetry_transport.py: consumes a group through an
instrumented ``Worker``, its spans written as JSON lines to ``--spans`` and its counters as
JSON to ``--metrics`` when it stops (SIGTERM: it shuts down gracefully)."""

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mediator.codec import event_type  # noqa: E402
from mediator.event import LocalEventBus  # noqa: E402


@event_type("test.otel.Shipped")
@dataclass(frozen=True)
class Shipped:
    order_id: int


@event_type("test.otel.Rejected")
@dataclass(frozen=True)
class Rejected:
    order_id: int


bus = LocalEventBus()

if os.environ.get("OTEL_TEST_SPANS"):  # run by `python -m mediator.worker otel_worker_app:bus --opentelemetry`
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    _provider = TracerProvider()
    _spans = open(os.environ["OTEL_TEST_SPANS"], "a")
    _provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=lambda span: span.to_json(indent=None) + "\n"))
    )
    trace.set_tracer_provider(_provider)


@bus.register
async def notify(event: Shipped) -> None:
    await asyncio.sleep(0)


@bus.register
async def refuse(event: Rejected) -> None:
    raise ValueError(f"order {event.order_id} refused")


def counters(reader) -> dict:
    values: dict = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("mediator.transport."):
                    for point in metric.data.data_points:
                        key = f"{metric.name} {point.attributes['messaging.destination.name']}"
                        values[key] = values.get(key, 0) + point.value
    return values


async def main(args: argparse.Namespace) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from mediator.opentelemetry import instrument
    from mediator.transport import Worker, connect

    spans = open(args.spans, "a")
    tracer_provider = TracerProvider()
    exporter = ConsoleSpanExporter(out=spans, formatter=lambda span: span.to_json(indent=None) + "\n")
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    async with connect(args.url, prefix=args.prefix) as transport:
        worker = Worker(transport, bus, group=args.group, start="earliest", max_deliveries=2, backoff=0.05)
        instrument(worker, tracer_provider=tracer_provider, meter_provider=meter_provider)
        async with worker:
            print("ready", flush=True)
            await worker.run()  # until SIGTERM
    with open(args.metrics, "w") as out:
        json.dump(counters(reader), out)
    spans.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--url", "--prefix", "--group", "--spans", "--metrics"):
        parser.add_argument(option, required=True)
    asyncio.run(main(parser.parse_args()))
