"""Errors of the transports (``mediator.transport``)."""

__all__ = [
    "TransportError",
    "TransportClosedError",
    "TransportConnectionError",
    "PublishError",
    "UnsupportedURLError",
    "ConsumerGroupError",
]


class TransportError(Exception):
    """Base class of every error a transport raises."""


class TransportClosedError(TransportError):
    """The transport (or the worker) was closed: it cannot be used any more."""


class TransportConnectionError(TransportError, ConnectionError):
    """The broker could not be reached, even after the reconnection attempts."""


class PublishError(TransportError):
    """The broker did not confirm a publish: the message may or may not have been stored.

    Publishing it again with the same ``message_id`` is safe where the broker deduplicates
    (JetStream) and is deduplicated by a worker's inbox everywhere.
    """


class UnsupportedURLError(TransportError, ValueError):
    """``connect`` was given a URL whose scheme no transport serves (or a malformed one)."""


class ConsumerGroupError(TransportError):
    """A consumer group could not be created or used (a bad name, or a broker refusal)."""
