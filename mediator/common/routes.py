"""Compiling a handler entry, once at registration, into what the engine dispatches."""

from typing import Any, Union

from mediator._engine import PipelineRoute, Route
from mediator._safe import safe_repr
from mediator.common.handler import CallableHandler
from mediator.common.modifiers import hook_stages, split_hooks
from mediator.common.registry.base import HandlerEntry

__all__ = ["compile_route"]


def compile_route(entry: HandlerEntry) -> Union[Route, PipelineRoute]:
    """The fastest form that keeps the entry's behaviour.

    A ``CallableHandler`` is invoked directly through its call plan, inside the engine's
    hook loop for the hooks nearest to it; ``ModifierFactory`` layers, if any, wrap that
    route. Other handlers go through the plain modifier pipeline.
    """
    handler = entry.handler
    if not isinstance(handler, CallableHandler):
        return PipelineRoute(handler, _build(entry.modifiers, handler, handler))
    factories, hooks = split_hooks(entry.modifiers)
    route = Route(handler, handler.invoker, *hook_stages(hooks)) if hooks else Route(handler, handler.invoker)
    if not factories:
        return route
    return PipelineRoute(handler, _build(factories, route.action, handler))


def _build(factories: Any, call: Any, target: Any) -> Any:
    """``ModifierStack.build`` with ``target`` always the handler itself."""
    for factory in reversed(factories):
        call = factory.create(call, target=target)
        if not callable(call):
            raise TypeError(f"modifier {safe_repr(factory)} create() returned {safe_repr(call)}, which is not callable")
    return call
