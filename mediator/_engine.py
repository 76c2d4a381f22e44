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
    from mediator import _core_py as _impl
else:
    try:
        if NO_EXTENSIONS:
            raise ImportError("pure engine requested")
        from mediator import _core as _impl
    except ImportError:
        from mediator import _core_py as _impl

COMPILED: bool = _impl.__name__ == "mediator._core"

ActionResult = _impl.ActionResult
ActionSubject = _impl.ActionSubject
EventDispatcher = _impl.EventDispatcher
Invoker = _impl.Invoker
PipelineRoute = _impl.PipelineRoute
RequestDispatcher = _impl.RequestDispatcher
Route = _impl.Route

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
