"""OpenTelemetry tracing and metrics for the buses (``pip install mediator[opentelemetry]``).

``instrument(bus)`` wraps a ``LocalRequestBus`` or a ``LocalEventBus`` built elsewhere;
``Tracing()`` is the same layer for any ``modifiers=``. Spans (through the
OpenTelemetry trace API; the SDK, or any other, is the application's choice):

- ``execute PlaceOrder``: one per ``execute`` that reaches its handler;
- ``publish OrderPlaced``: one per ``publish`` of an instrumented event bus, the parent of
  its handlers' spans (background runs included: they start in a copy of its context);
- ``handle OrderPlaced``: one per event handler run.

Each carries ``mediator.operation``, ``mediator.message`` (the message class),
``mediator.handler`` (the handler's qualified name; not on ``publish``) and
``mediator.outcome`` (``ok``, ``error`` or ``cancelled``); a failure is recorded on its
span (an exception event, status ``ERROR``, ``error.type``). Metrics (through the
metrics API): ``mediator.dispatch.duration`` (histogram, seconds),
``mediator.handler.failures`` (counter) and ``mediator.event.pending`` (gauge: an event
bus's background runs in flight, its ``pending``).

A bus that is not instrumented runs none of this: the core never imports this module.
"""

import asyncio
import itertools
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Optional

from opentelemetry import context as context_api
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from mediator import __version__
from mediator.common.handler import describe
from mediator.common.modifiers import ModifierFactory
from mediator.common.types import ActionCallType, ActionSubject

__all__ = ["Tracing", "instrument", "OPERATION", "MESSAGE", "HANDLER", "OUTCOME", "SCOPE"]

SCOPE = "mediator"  # the instrumentation scope of the tracer and the meter
OPERATION = "mediator.operation"
MESSAGE = "mediator.message"
HANDLER = "mediator.handler"
OUTCOME = "mediator.outcome"
BUS = "mediator.bus"
ERROR_TYPE = "error.type"


def get_tracer(tracer_provider: Optional[trace.TracerProvider] = None) -> trace.Tracer:
    return trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)


def get_meter(meter_provider: Optional[metrics.MeterProvider] = None) -> Meter:
    return metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)


class _Instruments:
    """The duration histogram and the failure counter of one meter."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "mediator.dispatch.duration", unit="s", description="Duration of a dispatch: an execute, a publish, a handler run"
        )
        self.failures = meter.create_counter(
            "mediator.handler.failures", unit="{failure}", description="Handler runs that raised"
        )


def _failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)


def _outcome_of(error: BaseException) -> str:
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "error"


class Tracing(ModifierFactory):
    """A span and the metrics of each handler run, as one modifier layer.

    Put it in any ``modifiers=`` (outermost, to time what the other layers add too), or
    let ``instrument(bus)`` add it. ``operation`` names the span (``"{operation}
    {MessageClass}"``): ``"handle"``, or ``"execute"`` on a request bus.

    It is a ``ModifierFactory`` rather than a ``Hook``: its span is made current for the
    handler and must be taken down however the run ends, cancellation included, which a
    hook's ``error`` stage does not see.
    """

    def __init__(
        self,
        *,
        tracer_provider: Optional[trace.TracerProvider] = None,
        meter_provider: Optional[metrics.MeterProvider] = None,
        operation: str = "handle",
    ) -> None:
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"Tracing operation= must be a non-empty str, got {operation!r}")
        self.operation = operation
        self._tracer = get_tracer(tracer_provider)
        self._instruments = _Instruments(get_meter(meter_provider))

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        target = kwargs.get("target")
        handler = describe(getattr(target, "obj", target))
        operation = self.operation
        tracer = self._tracer
        duration, failures = self._instruments.duration, self._instruments.failures
        attach, detach, set_span_in_context = context_api.attach, context_api.detach, trace.set_span_in_context
        clock = time.perf_counter

        known: Dict[type, Any] = {}  # per message class: its span name and attribute sets

        def describe_message(cls: type) -> Any:
            attributes = {OPERATION: operation, MESSAGE: describe(cls), HANDLER: handler}
            by_outcome = {outcome: {**attributes, OUTCOME: outcome} for outcome in ("ok", "error", "cancelled")}
            known[cls] = found = (f"{operation} {cls.__qualname__}", attributes, by_outcome)
            return found

        async def traced(action: ActionSubject) -> Any:
            cls = type(action.subject)
            name, attributes, by_outcome = known.get(cls) or describe_message(cls)
            span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
            token = attach(set_span_in_context(span))
            outcome = "ok"
            start = clock()
            try:
                return await call(action)
            except BaseException as error:
                outcome = _outcome_of(error)
                if outcome == "error":
                    _failed(span, error)
                    failures.add(1, {**attributes, ERROR_TYPE: type(error).__qualname__})
                raise
            finally:
                elapsed = clock() - start
                detach(token)
                span.set_attribute(OUTCOME, outcome)
                span.end()
                duration.record(elapsed, by_outcome[outcome])

        return traced

    def __repr__(self) -> str:
        return f"<Tracing {self.operation!r}>"


def _traced_publish(publish: Callable[..., Any], tracer: trace.Tracer, instruments: _Instruments) -> Callable[..., Any]:
    """``publish`` inside a span of its own, the parent of its handlers' spans."""
    duration = instruments.duration
    clock = time.perf_counter

    async def traced_publish(obj: Any, **inject: Any) -> None:
        cls = type(obj)
        attributes = {OPERATION: "publish", MESSAGE: describe(cls)}
        outcome = "ok"
        start = clock()
        with tracer.start_as_current_span(
            f"publish {cls.__qualname__}", kind=SpanKind.INTERNAL, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                await publish(obj, **inject)
            except BaseException as error:
                outcome = _outcome_of(error)
                if outcome == "error":
                    _failed(span, error)
                raise
            finally:
                span.set_attribute(OUTCOME, outcome)
                duration.record(clock() - start, {**attributes, OUTCOME: outcome})

    traced_publish.__wrapped__ = publish  # type: ignore[attr-defined]
    return traced_publish


class _PendingGauge:
    """One ``mediator.event.pending`` gauge per meter, observing every bus given to it."""

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


_gauges: "weakref.WeakKeyDictionary[Any, _PendingGauge]" = weakref.WeakKeyDictionary()
_global_gauge: Dict[str, _PendingGauge] = {}
_bus_numbers = itertools.count(1)
_INSTRUMENTED = "_mediator_opentelemetry"  # set on an instrumented bus


def _pending_gauge(meter_provider: Optional[metrics.MeterProvider]) -> _PendingGauge:
    if meter_provider is None:
        gauge = _global_gauge.get("global")
        if gauge is None:
            gauge = _global_gauge["global"] = _PendingGauge(get_meter(None))
        return gauge
    gauge = _gauges.get(meter_provider)
    if gauge is None:
        gauge = _gauges[meter_provider] = _PendingGauge(get_meter(meter_provider))
    return gauge


def instrument(
    bus: Any,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[metrics.MeterProvider] = None,
    name: Optional[str] = None,
) -> Tracing:
    """Trace and measure ``bus`` (a ``LocalRequestBus`` or a ``LocalEventBus``); returns its ``Tracing``.

    A ``Tracing`` layer goes outside every handler's modifiers (``bus.add_modifiers``),
    on the handlers registered already and on those to come. An event bus also gets a
    span per ``publish`` and its ``pending`` observed by the ``mediator.event.pending``
    gauge under ``mediator.bus=name`` (default: its class and a number). The providers
    default to the global ones. Instrumenting a bus twice is a ``ValueError``.
    """
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    if getattr(bus, _INSTRUMENTED, False):
        raise ValueError(f"{bus!r} is instrumented already")
    if isinstance(bus, LocalRequestBus):
        tracing = Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider, operation="execute")
        bus.add_modifiers(tracing)
    elif isinstance(bus, LocalEventBus):
        tracing = Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider, operation="handle")
        bus.add_modifiers(tracing)
        bus.publish = _traced_publish(bus.publish, tracing._tracer, tracing._instruments)  # type: ignore[method-assign]
        _pending_gauge(meter_provider).buses[bus] = name or f"{type(bus).__qualname__}-{next(_bus_numbers)}"
    else:
        raise TypeError(f"instrument() takes a LocalRequestBus or a LocalEventBus, got {bus!r}")
    setattr(bus, _INSTRUMENTED, True)
    return tracing
