"""Events across processes: a broker transport and the workers that consume it.

```python
from mediator.transport import Worker, connect

async with connect("redis://127.0.0.1:6379/0") as transport:      # "nats://...", "memory://"
    message_id = await transport.publish(OrderPlaced(order_id=7), key="7")

async with connect(url) as transport, Worker(transport, bus, group="billing") as worker:
    await worker.run()
```

``connect(url)`` picks the backend by the URL's scheme: ``memory://[name]`` (in this
process; transports connected to the same name share one broker), ``redis://`` and
``rediss://`` (Redis Streams; needs the ``redis`` extra), ``nats://`` and ``tls://``
(NATS JetStream; needs the ``nats`` extra). See ``mediator.transport.base`` for the
protocol every backend implements.
"""

from typing import Any
from urllib.parse import urlsplit

from mediator.transport.base import (
    MESSAGE_ID_HEADER,
    TRACEPARENT_HEADER,
    DeadLetter,
    Delivery,
    Transport,
    new_message_id,
    traceparent,
    type_family,
)
from mediator.transport.errors import (
    ConsumerGroupError,
    PublishError,
    TransportClosedError,
    TransportConnectionError,
    TransportError,
    UnsupportedURLError,
)

__all__ = [
    "connect",
    "Transport",
    "Delivery",
    "DeadLetter",
    "Worker",
    "Relay",
    "Inbox",
    "MemoryInbox",
    "RedisInbox",
    "TransportError",
    "TransportClosedError",
    "TransportConnectionError",
    "PublishError",
    "UnsupportedURLError",
    "ConsumerGroupError",
    "traceparent",
    "MESSAGE_ID_HEADER",
    "TRACEPARENT_HEADER",
    "new_message_id",
    "type_family",
]

# scheme -> (module, class): each backend is imported only when its scheme is used, so
# that its client library (an optional extra) is needed only then.
_BACKENDS = {
    "memory": ("mediator.transport.memory", "MemoryTransport"),
    "redis": ("mediator.transport.redis", "RedisTransport"),
    "rediss": ("mediator.transport.redis", "RedisTransport"),
    "unix": ("mediator.transport.redis", "RedisTransport"),
    "nats": ("mediator.transport.jetstream", "JetStreamTransport"),
    "tls": ("mediator.transport.jetstream", "JetStreamTransport"),
}

# Names imported on first use (their modules import more, or optional clients).
_LAZY = {
    "Worker": "mediator.transport.worker",
    "Relay": "mediator.transport.relay",
    "Inbox": "mediator.transport.inbox",
    "MemoryInbox": "mediator.transport.inbox",
    "RedisInbox": "mediator.transport.inbox",
}


def connect(url: str, *, codec: Any = None, **options: Any) -> Transport:
    """The transport for ``url``, not yet connected (``async with`` or ``await .open()``).

    Every backend class is built as ``Class(url, codec=codec, **options)``; the options
    are the backend's own (e.g. ``prefix=``, ``maxlen=`` for Redis). ``codec`` defaults to
    the process-wide ``mediator.codec.codec``.
    """
    if not isinstance(url, str):
        raise UnsupportedURLError(f"connect() takes a URL string, got {url!r}")
    scheme = urlsplit(url).scheme.lower()
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in _BACKENDS)
        raise UnsupportedURLError(f"no transport for the URL {url!r}: its scheme must be one of {known}")
    module_name, class_name = backend
    import importlib

    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    return cls(url, codec=codec, **options)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mediator.transport' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
