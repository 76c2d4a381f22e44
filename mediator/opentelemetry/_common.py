"""What every part of ``mediator.opentelemetry`` shares: names, providers, instruments."""

import asyncio
import weakref
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from opentelemetry import context as context_api
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Link, Status, StatusCode

from mediator import __version__

SCOPE = "mediator"  # the instrumentation scope of the tracer and the meter
OPERATION = "mediator.operation"
MESSAGE = "mediator.message"
HANDLER = "mediator.handler"
OUTCOME = "mediator.outcome"
BUS = "mediator.bus"
ERROR_TYPE = "error.type"
INSTRUMENTED = "_mediator_opentelemetry"  # set on each object instrument() wrapped


def get_tracer(tracer_provider: Optional[trace.TracerProvider] = None) -> trace.Tracer:
    return trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)


class Instruments:
    """The metric instruments of one meter provider (made once per provider)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.duration = meter.create_histogram(
            "mediator.dispatch.duration",
            unit="s",
            description="Duration of a dispatch: an execute, a publish, a handler run, a message processed",
        )
        self.failures = meter.create_counter(
            "mediator.handler.failures", unit="{failure}", description="Handler runs that raised"
        )
        self.consumed = meter.create_counter(
            "mediator.transport.consumed", unit="{message}", description="Messages a worker took to handle"
        )
        self.redelivered = meter.create_counter(
            "mediator.transport.redelivered",
            unit="{message}",
            description="Messages a worker took that its group had been given before (a retry or a reclaim)",
        )
        self.dead_lettered = meter.create_counter(
            "mediator.transport.dead_lettered", unit="{message}", description="Messages a worker gave up on"
        )
        self._pending: Optional[PendingGauge] = None

    @property
    def pending(self) -> "PendingGauge":
        if self._pending is None:
            self._pending = PendingGauge(self.meter)
        return self._pending


class PendingGauge:
    """The ``mediator.event.pending`` gauge of one meter, observing every bus given to it."""

    def __init__(self, meter: Meter) -> None:
        self.buses: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        meter.create_observable_gauge(
            "mediator.event.pending",
            callbacks=[self.observe],
            unit="{run}",
            description="Background event handler runs in flight",
        )

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(bus.pending, {BUS: name}) for bus, name in list(self.buses.items())]


_instruments: "weakref.WeakKeyDictionary[Any, Instruments]" = weakref.WeakKeyDictionary()
_global_instruments: Dict[str, Instruments] = {}


def instruments_of(meter_provider: Optional[metrics.MeterProvider]) -> Instruments:
    """The instruments of ``meter_provider`` (``None``: the global one), made on first use."""
    if meter_provider is None:
        found = _global_instruments.get("global")
        if found is None:
            found = _global_instruments["global"] = Instruments(metrics.get_meter(SCOPE, __version__))
        return found
    found = _instruments.get(meter_provider)
    if found is None:
        found = _instruments[meter_provider] = Instruments(
            metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        )
    return found


def activate(span: trace.Span, parent: Any = None) -> Any:
    """Make ``span`` current (in ``parent``'s context, else the current one); returns the
    context to ``restore``.

    Restored by value, not by a contextvars token: before Python 3.11 (and on PyPy) a
    coroutine whose first step ran inline, in one context, goes on in a task that runs in
    a copy of it (``asyncio`` cannot give a task a context there), where a token of the
    first context is refused ("created in a different Context").
    """
    previous = context_api.get_current()
    context_api.attach(trace.set_span_in_context(span, parent if parent is not None else previous))
    return previous


def restore(previous: Any) -> None:
    context_api.attach(previous)


def failed(span: trace.Span, error: BaseException) -> None:
    """Record ``error`` on ``span``: an exception event, status ERROR, ``error.type``."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)


def outcome_of(error: BaseException) -> str:
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "error"


def mark_instrumented(obj: Any) -> None:
    if getattr(obj, INSTRUMENTED, False):
        raise ValueError(f"{obj!r} is instrumented already")
    setattr(obj, INSTRUMENTED, True)


def context_carrier() -> Dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate`` if any):
    empty when no span is current."""
    carrier: Dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def links_from(carrier: Optional[Mapping[str, Any]]) -> Sequence[Link]:
    """A link to the span whose context ``carrier`` holds (stored metadata, message
    headers), or none."""
    if not carrier or "traceparent" not in carrier:
        return ()
    text = {key: value for key, value in carrier.items() if isinstance(value, str)}
    context = trace.get_current_span(propagate.extract(text)).get_span_context()
    return (Link(context),) if context.is_valid else ()
