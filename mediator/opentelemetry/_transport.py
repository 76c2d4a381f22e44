"""Spans and metrics across the process boundary: a transport's publish, a worker's messages.

Messaging semantic conventions: a ``PRODUCER`` span ``publish {destination}`` around
each publish, whose context goes into the message headers (W3C ``traceparent``, and
``tracestate`` if any); a ``CONSUMER`` span ``process {destination}`` around each message
a worker handles, continuing the publisher's trace. The destination is the message's
type family (``bank.Deposited``), the stream or subject it travels on.
"""

import contextvars
import json
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mediator.opentelemetry._common import (
    OUTCOME,
    activate,
    context_carrier,
    failed,
    get_tracer,
    instruments_of,
    links_from,
    mark_instrumented,
    outcome_of,
    restore,
)

__all__ = ["instrument_transport", "instrument_worker"]

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION = "messaging.operation"  # the older convention's name, kept beside the newer two
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
GROUP = "messaging.consumer.group.name"
CLIENT_ID = "messaging.client.id"
DELIVERIES = "mediator.deliveries"

# [consumer span, delivery, outcome] of the message a worker is handling in this context.
_processing: "contextvars.ContextVar[Any]" = contextvars.ContextVar("mediator.opentelemetry.processing", default=None)


def _family(type_string: Any) -> str:
    from mediator.transport.base import type_family

    return type_family(type_string) if isinstance(type_string, str) else repr(type_string)


def _stored_metadata(headers: Mapping[str, str]) -> Any:
    """The metadata a ``Relay`` forwards with a stored event (its ``metadata`` header, JSON)."""
    text = headers.get("metadata")
    if not isinstance(text, str) or "traceparent" not in text:
        return None
    try:
        metadata = json.loads(text)
    except ValueError:
        return None
    return metadata if isinstance(metadata, dict) else None


def instrument_transport(
    transport: Any,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[metrics.MeterProvider] = None,
) -> Any:
    """A producer span per message published, its context injected into the message's headers.

    Both ways out are covered: ``publish``/``publish_encoded`` (the span is current while
    the broker takes the message) and the batches of ``publish_many`` and of a ``Relay``
    (a span per message, started before the batch goes and ended when the broker has it).
    A message that carries a trace context already, in a ``traceparent`` header or in the
    stored metadata a ``Relay`` forwards (its ``metadata`` header), gets a producer span
    linked to it (the command that saved the event), which the consumer then continues.
    """
    mark_instrumented(transport)
    tracer = get_tracer(tracer_provider)
    duration = instruments_of(meter_provider).duration
    system = getattr(transport, "scheme", type(transport).__name__)
    publish_encoded, send_many = transport.publish_encoded, transport._send_many
    clock = time.perf_counter

    def start(type_string: Any, headers: Dict[str, str], message_id: Any) -> Tuple[Any, str]:
        destination = _family(type_string)
        attributes = {
            SYSTEM: system,
            DESTINATION: destination,
            OPERATION: "publish",
            OPERATION_TYPE: "send",
            OPERATION_NAME: "publish",
        }
        if isinstance(message_id, str):
            attributes[MESSAGE_ID] = message_id
        span = tracer.start_span(
            f"publish {destination}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links_from(headers) or links_from(_stored_metadata(headers)),
        )
        return span, destination

    def end(span: Any, destination: str, began: float, error: Optional[BaseException]) -> None:
        outcome = "ok" if error is None else outcome_of(error)
        if outcome == "error" and error is not None:
            failed(span, error)
        span.set_attribute(OUTCOME, outcome)
        span.end()
        duration.record(clock() - began, {SYSTEM: system, DESTINATION: destination, OPERATION: "publish", OUTCOME: outcome})

    async def traced_publish_encoded(
        type: Any,
        payload: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> str:
        if headers is not None and not isinstance(headers, Mapping):  # the transport's own error
            return await publish_encoded(type, payload, key=key, headers=headers, message_id=message_id)
        given = dict(headers) if headers else {}
        span, destination = start(type, given, message_id)
        began = clock()
        previous = activate(span)
        try:
            given.update(context_carrier())  # the consumer continues from this span
            sent = await publish_encoded(type, payload, key=key, headers=given, message_id=message_id)
            span.set_attribute(MESSAGE_ID, sent)
        except BaseException as error:
            restore(previous)
            end(span, destination, began, error)
            raise
        restore(previous)
        end(span, destination, began, None)
        return sent

    async def traced_send_many(batch: Any) -> None:
        began = clock()
        spans, traced = [], []
        for type_string, payload, key, headers, message_id in batch:
            headers = dict(headers)
            span, destination = start(type_string, headers, message_id)
            propagate.inject(headers, context=trace.set_span_in_context(span))
            spans.append((span, destination))
            traced.append((type_string, payload, key, headers, message_id))
        try:
            await send_many(traced)
        except BaseException as error:
            for span, destination in spans:
                end(span, destination, began, error)
            raise
        for span, destination in spans:
            end(span, destination, began, None)

    transport.publish_encoded = traced_publish_encoded
    transport._send_many = traced_send_many
    return transport


def _count_settlements(transport: Any, instruments: Any) -> None:
    """Count the dead letters a worker writes on ``transport`` and tell the consumer span
    how its message ended (once per transport, however many workers share it)."""
    if getattr(transport, "_mediator_opentelemetry_consumer", False):
        return
    transport._mediator_opentelemetry_consumer = True
    system = getattr(transport, "scheme", type(transport).__name__)
    dead_letter, retry = transport.dead_letter, transport.retry

    def settled(delivery: Any, outcome: str, description: str) -> None:
        processing = _processing.get()
        if processing is not None and processing[1] is delivery:
            processing[2] = outcome
            processing[0].set_status(Status(StatusCode.ERROR, description))

    async def traced_dead_letter(delivery: Any, *, error: str, handler: Optional[str]) -> None:
        await dead_letter(delivery, error=error, handler=handler)
        instruments.dead_lettered.add(1, {SYSTEM: system, DESTINATION: _family(delivery.type), GROUP: delivery.group})
        settled(delivery, "dead_lettered", f"dead-lettered: {error}" + (f" in {handler}" if handler else ""))

    async def traced_retry(delivery: Any, delay: float) -> None:
        await retry(delivery, delay)
        settled(delivery, "retried", f"to be retried in {delay:g}s")

    transport.dead_letter = traced_dead_letter
    transport.retry = traced_retry


def instrument_worker(
    worker: Any,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[metrics.MeterProvider] = None,
) -> Any:
    """A consumer span per message the worker handles, continuing the publisher's trace,
    and the consumed, redelivered and dead-lettered counters."""
    mark_instrumented(worker)
    tracer = get_tracer(tracer_provider)
    instruments = instruments_of(meter_provider)
    transport = worker.transport
    _count_settlements(transport, instruments)
    system = getattr(transport, "scheme", type(transport).__name__)
    group, consumer = worker.group, worker.consumer
    handle = worker._handle
    clock = time.perf_counter

    async def traced_handle(delivery: Any) -> None:
        destination = _family(delivery.type)
        counted = {SYSTEM: system, DESTINATION: destination, GROUP: group}
        instruments.consumed.add(1, counted)
        if delivery.deliveries > 1:
            instruments.redelivered.add(1, counted)
        attributes = {
            **counted,
            OPERATION: "process",
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            MESSAGE_ID: delivery.message_id,
            CLIENT_ID: consumer,
            DELIVERIES: delivery.deliveries,
        }
        parent = propagate.extract(dict(delivery.headers or {}))
        start = clock()
        span = tracer.start_span(f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
        previous = activate(span, parent)
        processing = [span, delivery, "ok"]  # the outcome: settled() may change it
        outer = _processing.get()
        _processing.set(processing)  # restored by value, as the span (see activate)
        try:
            await handle(delivery)
        except BaseException as error:
            processing[2] = outcome_of(error)
            if processing[2] == "error":
                failed(span, error)
            raise
        finally:
            _processing.set(outer)
            restore(previous)
            span.set_attribute(OUTCOME, processing[2])
            span.end()
            duration.record(clock() - start, {**counted, OPERATION: "process", OUTCOME: processing[2]})

    duration = instruments.duration
    worker._handle = traced_handle
    return worker
