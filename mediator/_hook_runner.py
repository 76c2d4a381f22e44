"""The pure engine's hooked routes: one coroutine function per route, written for its shape."""

from types import ModuleType
from typing import Any, Callable, Sequence

# Afters nested in one expression, at most: the parser refuses a few hundred nested calls
# (200 nested parentheses on CPython), so a longer chain is cut into statements. Up to
# this many, the source is one expression, the cheapest form.
_NESTED_AFTERS = 50


def hook_runner(
    befores: Sequence[Callable[..., Any]],
    call: Callable[..., Any],
    subject_only: bool,
    afters: Sequence[Callable[..., Any]],
    name: str,
) -> Callable[[Any, Any], Any]:
    """``run(subject, inject)``: a coroutine that, when first awaited, calls the befores in
    order, then the handler (``call(subject)`` when ``subject_only``, else ``call(subject,
    inject)``), awaits it and passes its result through the afters, innermost first.

    Its source is written for the number of stages, with no loop and no None check (the
    afters' calls nested in one expression, ``_NESTED_AFTERS`` at a time); the
    stages are globals of a module of its own, the cheapest names to read on CPython (a
    default costs a copy per call, a closure cell more) and, being a module's, on PyPy too
    (a plain dict as globals is a dict lookup per name there). ``name`` names its
    coroutines, as the handler's would.
    """
    stages = {f"before_{index}": stage for index, stage in enumerate(befores)}
    stages.update({f"after_{index}": stage for index, stage in enumerate(afters)})
    stages["call"] = call
    lines = [f"    before_{index}(subject, inject)" for index in range(len(befores))]
    result = "await call(subject)" if subject_only else "await call(subject, inject)"
    for index in range(len(afters)):
        if index and not index % _NESTED_AFTERS:  # a statement of its own, not a deeper call
            lines.append(f"    result = {result}")
            result = "result"
        result = f"after_{index}(subject, {result})"
    lines.append(f"    return {result}")
    source = "async def run(subject, inject):\n" + "\n".join(lines) + "\n"
    module = ModuleType(f"mediator hooks of {name}")
    namespace = module.__dict__
    namespace.update(stages)  # only names made here reach the source: nothing of the user's
    exec(compile(source, f"<mediator hooks of {name}>", "exec"), namespace)
    run = namespace["run"]
    run.__name__ = run.__qualname__ = name
    return run
