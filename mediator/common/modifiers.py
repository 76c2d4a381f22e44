"""Modifiers (middleware): ``ModifierFactory`` layers and the lighter ``Hook`` form."""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from mediator._safe import safe_repr
from mediator.common.types import ActionCallType, ActionResult, ActionSubject

__all__ = ["ModifierFactory", "ModifierStack", "Hook", "hook_stages", "split_hooks"]


class ModifierFactory:
    """Makes one layer of a modifier stack.

    ``create(call, target=...)`` returns an action callable that wraps ``call``: it takes
    an ``ActionSubject`` and returns (awaitable) an ``ActionResult``. ``target`` is the
    innermost callable of the stack, the handler. Use it for anything that must own the
    handler's await: timeouts, retries, transactions, replacing the subject.
    """

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        raise NotImplementedError(f"{type(self).__qualname__} must implement create(call, **kwargs)")


class ModifierStack:
    """Builds modifier stacks."""

    @classmethod
    def build(cls, factories: Sequence[ModifierFactory], call: ActionCallType) -> ActionCallType:
        """Wrap ``call`` in ``factories``; the first factory is the outermost layer."""
        target = call
        for factory in reversed(factories):
            call = factory.create(call, target=target)
        return call


class Hook(ModifierFactory):
    """A light, synchronous modifier: ``before``, ``after`` and ``error`` callbacks.

    The engine runs a bus's hooks as one loop around the handler, with no coroutine per
    layer, so they cost little more than the callbacks themselves. Override the stages
    you need in a subclass, or pass them as callables: ``Hook(before=check_auth)``.

    - ``before(subject, inject)``: runs before the handler; may add to or change the
      ``inject`` dict, or raise to refuse the action.
    - ``after(subject, result)``: returns the result (the same or a replacement).
    - ``error(subject, error)``: sees an ``Exception`` on its way out; the error is
      re-raised afterwards (raise another one to replace it).

    Stages unwind like nested ``try`` blocks: a hook's ``after``/``error`` runs only if its
    ``before`` ran. Cancellation and other ``BaseException`` pass through untouched.
    A ``Hook`` also works wherever a ``ModifierFactory`` does (``create``).
    """

    def __init__(
        self,
        before: Optional[Callable[[Any, Dict[str, Any]], None]] = None,
        after: Optional[Callable[[Any, Any], Any]] = None,
        error: Optional[Callable[[Any, Exception], None]] = None,
    ) -> None:
        for name, stage in (("before", before), ("after", after), ("error", error)):
            if stage is not None:
                if not callable(stage):
                    raise TypeError(f"Hook {name}= must be callable, got {safe_repr(stage)}")
                setattr(self, name, stage)

    def before(self, subject: Any, inject: Dict[str, Any]) -> None:
        """Called before the handler."""

    def after(self, subject: Any, result: Any) -> Any:
        """Called with the handler's result; returns the result to pass on."""
        return result

    def error(self, subject: Any, error: Exception) -> None:
        """Called with the exception leaving the handler; it is re-raised afterwards."""

    def create(self, call: ActionCallType, **kwargs: Any) -> ActionCallType:
        """This hook as an ordinary modifier layer (when it stands outside a factory)."""
        before, after, error = hook_stages([self])

        async def layer(action: ActionSubject) -> ActionResult:
            if before[0] is not None:
                before[0](action.subject, action.inject)
            try:
                result = await call(action)
            except Exception as exc:
                if error[0] is not None:
                    error[0](action.subject, exc)
                raise
            if after[0] is not None:
                result = ActionResult(after[0](action.subject, result.result))
            return result

        return layer


Stage = Optional[Callable[..., Any]]


def _stage(hook: Hook, name: str) -> Stage:
    """The hook's callable for a stage, or ``None`` where it keeps the no-op default."""
    stage = getattr(hook, name)
    if getattr(stage, "__func__", None) is getattr(Hook, name):
        return None
    return stage


def hook_stages(hooks: Sequence[Hook]) -> Tuple[Tuple[Stage, ...], Tuple[Stage, ...], Tuple[Stage, ...]]:
    """Befores, afters and errors of ``hooks`` (outermost first), aligned per layer."""
    return (
        tuple(_stage(hook, "before") for hook in hooks),
        tuple(_stage(hook, "after") for hook in hooks),
        tuple(_stage(hook, "error") for hook in hooks),
    )


def split_hooks(modifiers: Sequence[Any]) -> Tuple[Tuple[Any, ...], Tuple[Hook, ...]]:
    """Split a stack into its factories and the run of hooks innermost to the handler.

    The trailing hooks run in the engine's loop; any hook outside a factory keeps its
    place as an ordinary layer.
    """
    modifiers = tuple(modifiers)
    split = len(modifiers)
    while split and isinstance(modifiers[split - 1], Hook):
        split -= 1
    return modifiers[:split], modifiers[split:]
