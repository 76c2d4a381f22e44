"""Spans and metrics of the local buses: ``Tracing`` and ``instrument_bus``."""

import itertools
import time
from typing import Any, Callable, Dict, Mapping, Optional

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind

from mediator.common.handler import describe
from mediator.common.modifiers import ModifierFactory
from mediator.common.types import ActionCallType, ActionSubject
from mediator.opentelemetry._common import (
    ERROR_TYPE,
    HANDLER,
    MESSAGE,
    OPERATION,
    OUTCOME,
    Instruments,
    activate,
    failed,
    get_tracer,
    instruments_of,
    links_from,
    mark_instrumented,
    outcome_of,
    restore,
)

__all__ = ["Tracing", "instrument_bus"]


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
        self.tracer = get_tracer(tracer_provider)
        self.instruments = instruments_of(meter_provider)

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        target = kwargs.get("target")
        handler = describe(getattr(target, "obj", target))
        operation = self.operation
        tracer = self.tracer
        duration, failures = self.instruments.duration, self.instruments.failures
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
            previous = activate(span)
            outcome = "ok"
            start = clock()
            try:
                return await call(action)
            except BaseException as error:
                outcome = outcome_of(error)
                if outcome == "error":
                    failed(span, error)
                    failures.add(1, {**attributes, ERROR_TYPE: type(error).__qualname__})
                raise
            finally:
                elapsed = clock() - start
                restore(previous)
                span.set_attribute(OUTCOME, outcome)
                span.end()
                duration.record(elapsed, by_outcome[outcome])

        return traced

    def __repr__(self) -> str:
        return f"<Tracing {self.operation!r}>"


def _traced_publish(publish: Callable[..., Any], tracer: trace.Tracer, instruments: Instruments) -> Callable[..., Any]:
    """``publish`` inside a span of its own, the parent of its handlers' spans.

    An event handed over with the store record it came from (``recorded=``, as a
    ``Subscription`` does) links its span to the trace context saved in its metadata; one
    handed over with message headers that carry a ``traceparent`` (``headers=``, as a
    ``Worker`` does) continues that trace when no span is current (a worker that is not
    instrumented itself, such as one run by ``python -m mediator.worker``).
    """
    duration = instruments.duration
    clock = time.perf_counter
    current_span = trace.get_current_span

    async def traced_publish(obj: Any, **inject: Any) -> None:
        cls = type(obj)
        attributes = {OPERATION: "publish", MESSAGE: describe(cls)}
        recorded = inject.get("recorded")
        links = links_from(getattr(recorded, "metadata", None)) if recorded is not None else ()
        headers = inject.get("headers")
        parent = None
        if isinstance(headers, Mapping) and "traceparent" in headers and not current_span().get_span_context().is_valid:
            parent = propagate.extract({key: value for key, value in headers.items() if isinstance(value, str)})
        outcome = "ok"
        start = clock()
        span = tracer.start_span(
            f"publish {cls.__qualname__}", context=parent, kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        previous = activate(span, parent)
        try:
            await publish(obj, **inject)
        except BaseException as error:
            outcome = outcome_of(error)
            if outcome == "error":
                failed(span, error)
            raise
        finally:
            restore(previous)
            span.set_attribute(OUTCOME, outcome)
            span.end()
            duration.record(clock() - start, {**attributes, OUTCOME: outcome})

    traced_publish.__wrapped__ = publish  # type: ignore[attr-defined]
    return traced_publish


_bus_numbers = itertools.count(1)


def instrument_bus(
    bus: Any,
    *,
    tracer_provider: Optional[trace.TracerProvider] = None,
    meter_provider: Optional[metrics.MeterProvider] = None,
    name: Optional[str] = None,
) -> Tracing:
    """See ``mediator.opentelemetry.instrument``."""
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    if isinstance(bus, LocalRequestBus):
        mark_instrumented(bus)
        tracing = Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider, operation="execute")
        bus.add_modifiers(tracing)
    elif isinstance(bus, LocalEventBus):
        mark_instrumented(bus)
        tracing = Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider, operation="handle")
        bus.add_modifiers(tracing)
        bus.publish = _traced_publish(bus.publish, tracing.tracer, tracing.instruments)  # type: ignore[method-assign]
        tracing.instruments.pending.buses[bus] = name or f"{type(bus).__qualname__}-{next(_bus_numbers)}"
    else:
        raise TypeError(f"instrument() takes a bus, a transport, a worker, an event store or a repository, got {bus!r}")
    return tracing
