"""Chooses the dispatch engine once, at import: compiled ``_core`` or its pure twin.

The pure engine is used on PyPy and other non-CPython interpreters, when the extension
cannot be imported, or when ``MEDIATOR_NO_EXTENSIONS`` is set to a true value.
"""

import os
import platform
from typing import TYPE_CHECKING

NO_EXTENSIONS = os.environ.get("MEDIATOR_NO_EXTENSIONS", "").lower() not in ("", "0", "false", "no")
if platform.python_implementation() != "CPython":
    NO_EXTENSIONS = True

if TYPE_CHECKING:  # type checkers read the typed pure twin
    from mediator._core_py import (
        ActionResult,
        ActionSubject,
        EventDispatcher,
        Invoker,
        PipelineRoute,
        RequestDispatcher,
        Route,
    )

    COMPILED = False
else:
    try:
        if NO_EXTENSIONS:
            raise ImportError("pure engine requested")
        from mediator._core import (
            ActionResult,
            ActionSubject,
            EventDispatcher,
            Invoker,
            PipelineRoute,
            RequestDispatcher,
            Route,
        )

        COMPILED = True
    except ImportError:
        from mediator._core_py import (
            ActionResult,
            ActionSubject,
            EventDispatcher,
            Invoker,
            PipelineRoute,
            RequestDispatcher,
            Route,
        )

        COMPILED = False

__all__ = [
    "COMPILED",
    "NO_EXTENSIONS",
    "ActionResult",
    "ActionSubject",
    "EventDispatcher",
    "Invoker",
    "PipelineRoute",
    "RequestDispatcher",
    "Route",
]
