"""The trace context saved with events: an event store's appends, a repository's saves.

Each event saved while a span is current carries that span's W3C context in its
metadata (``traceparent``, and ``tracestate`` if any), so whatever later reads it (a
projection run by a ``Subscription``, a relay) can link its own span back to the command
that caused it. A ``metadata`` key of the caller's own wins over the saved context's.
"""

from typing import Any, Dict, Optional

from mediator.opentelemetry._common import context_carrier, mark_instrumented

__all__ = ["instrument_store", "instrument_repository", "with_trace_context"]


def with_trace_context(metadata: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """``metadata`` plus the current trace context (``metadata`` itself when no span is current)."""
    carrier = context_carrier()
    if not carrier:
        return metadata
    if metadata is None:
        return dict(carrier)
    if not isinstance(metadata, dict):
        return metadata  # the store refuses it, with its own error
    return {**carrier, **metadata}


def instrument_store(store: Any) -> Any:
    """``store.append`` saves the current trace context in its events' metadata."""
    mark_instrumented(store)
    append = store.append

    async def append_with_context(stream: str, events: Any, *, expected_version: Optional[int], metadata: Any = None) -> int:
        return await append(stream, events, expected_version=expected_version, metadata=with_trace_context(metadata))

    store.append = append_with_context
    return store


def instrument_repository(repository: Any) -> Any:
    """``repository.save`` saves the current trace context in its events' metadata."""
    mark_instrumented(repository)
    save = repository.save

    async def save_with_context(*aggregates: Any, metadata: Any = None) -> None:
        await save(*aggregates, metadata=with_trace_context(metadata))

    repository.save = save_with_context
    return repository
