"""The values that travel through a modifier stack."""

from typing import Awaitable, Callable

from mediator._engine import ActionResult, ActionSubject

ActionCallType = Callable[[ActionSubject], Awaitable[ActionResult]]
"""An action callable: one layer of a modifier stack, or the handler at its centre."""

__all__ = ["ActionSubject", "ActionResult", "ActionCallType"]
