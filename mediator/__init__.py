"""mediator: a fast asyncio mediator bus for CQRS and event-driven Python.

``COMPILED`` tells whether the compiled engine is in use (``False``: the pure-Python one).
"""

from mediator._engine import COMPILED
from mediator.common.introspection import MissingHandlersError
from mediator.common.modifiers import Hook, ModifierFactory
from mediator.event import LocalEventBus
from mediator.request import LocalRequestBus, Request
from mediator.stream import Stream

__version__ = "1.0.0"

__all__ = [
    "COMPILED",
    "Hook",
    "ModifierFactory",
    "LocalEventBus",
    "LocalRequestBus",
    "MissingHandlersError",
    "Request",
    "Stream",
    "__version__",
]
