"""OpenTelemetry tracing and metrics (``pip install mediator[opentelemetry]``).

``instrument(obj)`` wraps an object built elsewhere; the providers default to the global
ones (``tracer_provider=``, ``meter_provider=`` to choose). Through the OpenTelemetry
API only: the SDK and the exporters are the application's choice.

- A ``LocalRequestBus``: a span ``execute PlaceOrder`` per execute that reaches its handler.
- A ``LocalEventBus``: a span ``publish OrderPlaced`` per publish, the parent of a span
  ``handle OrderPlaced`` per handler run (background runs included: they start in a copy
  of its context); ``mediator.event.pending`` observes its ``pending`` (``name=`` labels it).
- A transport (``mediator.transport``): a ``PRODUCER`` span per publish whose W3C trace
  context goes into the message headers.
- A ``Worker``: a ``CONSUMER`` span per message, continuing the publisher's trace
  (messaging semantic conventions), its bus instrumented too if it is not yet, and the
  transport counters.
- An ``EventStore`` or a ``Repository`` (``mediator.eventsourcing``): the events saved carry
  the current trace context in their metadata; an instrumented event bus run by a
  ``Subscription`` links each event's span back to it.

Bus spans carry ``mediator.operation``, ``mediator.message`` (the message class),
``mediator.handler`` (not on ``publish``) and ``mediator.outcome`` (``ok``, ``error``,
``cancelled``; a message also ``retried`` or ``dead_lettered``); a failure is recorded
on its span (an exception event, status ``ERROR``, ``error.type``). Metrics:
``mediator.dispatch.duration`` (histogram, seconds), ``mediator.handler.failures``,
``mediator.transport.consumed``, ``mediator.transport.redelivered`` and
``mediator.transport.dead_lettered`` (counters), ``mediator.event.pending`` (gauge).

``Tracing()`` is the bus layer itself, for any ``modifiers=``. Nothing here runs for an
object that is not instrumented: ``import mediator`` does not import this package.
"""

import sys
from typing import Any, Optional

from opentelemetry import metrics, trace

from mediator.opentelemetry._buses import Tracing, instrument_bus
from mediator.opentelemetry._common import ERROR_TYPE, HANDLER, MESSAGE, OPERATION, OUTCOME, SCOPE
from mediator.opentelemetry._store import instrument_repository, instrument_store, with_trace_context
from mediator.opentelemetry._transport import instrument_transport, instrument_worker

__all__ = [
    "instrument",
    "Tracing",
    "with_trace_context",
    "SCOPE",
    "OPERATION",
    "MESSAGE",
    "HANDLER",
    "OUTCOME",
    "ERROR_TYPE",
]


def _is(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, without importing ``module`` (if ``obj`` is one,
    it is imported already)."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


def instrument(
    obj: Any,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[metrics.MeterProvider] = None,
    name: Optional[str] = None,
) -> Any:
    """Trace and measure ``obj`` (see the module docstring); returns ``obj``.

    ``name`` labels an event bus's ``pending`` gauge (default: its class and a number).
    Instrumenting an object twice is a ``ValueError``; an object of another kind, a
    ``TypeError``.
    """
    providers: Any = dict(tracer_provider=tracer_provider, meter_provider=meter_provider)
    if _is(obj, "mediator.transport.worker", "Worker"):
        bus = obj.bus
        if _is(bus, "mediator.event.local", "LocalEventBus") and not getattr(bus, "_mediator_opentelemetry", False):
            instrument_bus(bus, **providers)
        return instrument_worker(obj, **providers)
    if _is(obj, "mediator.transport.base", "Transport"):
        return instrument_transport(obj, **providers)
    if _is(obj, "mediator.eventsourcing.store", "EventStore"):
        return instrument_store(obj)
    if _is(obj, "mediator.eventsourcing.repository", "Repository"):
        return instrument_repository(obj)
    instrument_bus(obj, name=name, **providers)
    return obj
