"""Runs differential-test programs on the engine this process loaded (see test_differential.py).

Started as a script, once per engine (``MEDIATOR_NO_EXTENSIONS`` picks it): it answers a
first line ``{"compiled": bool}``, then reads one JSON line ``{"source": ...}`` per program
and writes one JSON line with the program's canonical trace: what its code logged (call
order, results, errors with their chains and notes), what the ``mediator`` and ``asyncio``
loggers received, and the warnings raised. Object addresses are blanked out, nothing else.

A program is Python source that defines ``async def main()``; it runs in a fresh event
loop with the names of ``PRELUDE`` (the mediator API and its ``retry`` and ``timeout``, ``log``, ``outcome``, the subject
classes ``A``, ``B(A)``, ``C``, ``Twin`` (equal to ``A``), ``BadSubject`` and the exceptions ``Boom``, ``Fatal``, ``BadRepr``).
"""

import asyncio
import gc
import json
import logging
import re
import sys
import types
import warnings
from typing import Any, Dict, List

import mediator
from mediator import Hook, ModifierFactory, Stream  # noqa: F401 - for the programs
from mediator.common.factory import CallableHandlerPolicy
from mediator.common.types import ActionResult, ActionSubject
from mediator.errors import EventHandlerErrors
from mediator.event import LocalEventBus
from mediator.modifiers import retry, timeout
from mediator.request import LocalRequestBus

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_TASK = re.compile(r"Task-[0-9]+")
_DEFINED = re.compile(r" done, defined at [^>]*>")
# What a task runs: a coroutine on the pure engine, a relay (no code, no frame) on the compiled one
_CORO = re.compile(r"coro=<(?:<[^<>]*>|[^<>])*>")


def normalise(text: str) -> str:
    """Blank out what must differ between two processes (object addresses, task numbers) and
    between the engines (what a task's awaitable is)."""
    return _CORO.sub("coro=<?>", _DEFINED.sub(" done>", _TASK.sub("Task-?", _ADDRESS.sub("0x?", text))))


def safe(fn: Any, obj: Any) -> str:
    try:
        return normalise(fn(obj))
    except BaseException as error:  # noqa: B902 - a user's repr may raise anything
        return f"<{fn.__name__} failed: {type(error).__name__}>"


def describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able, engine-neutral account of a value or an exception (with its chain)."""
    if isinstance(value, BaseException):
        account: Dict[str, Any] = {"type": type(value).__qualname__, "str": safe(str, value)}
        notes = getattr(value, "__notes__", None)
        if notes:
            account["notes"] = [safe(str, note) for note in notes]
        if isinstance(value, EventHandlerErrors):
            account["handlers"] = [safe(repr, handler) for handler in value.handlers]
            account["event"] = safe(repr, value.event)
        members = getattr(value, "exceptions", None)
        if isinstance(members, tuple):
            account["exceptions"] = [describe(member, depth + 1) for member in members]
        if depth < 4:
            if value.__cause__ is not None:
                account["cause"] = describe(value.__cause__, depth + 1)
            if value.__context__ is not None and value.__context__ is not value.__cause__:
                account["context"] = describe(value.__context__, depth + 1)
        return account
    if isinstance(value, (list, tuple)):
        return [describe(item, depth) for item in value]
    return safe(repr, value)


class A:
    """A subject: ``A(n)``, with base-class dispatch to ``B(A)``; ``C`` is unrelated."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n})"


class B(A):
    pass


class C:
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"C({self.n})"


class _EqualToA(type):
    """A metaclass making its classes equal (and hash-equal) to ``A``."""

    def __eq__(cls, other: Any) -> bool:
        return other is A or other is cls

    def __hash__(cls) -> int:
        return hash(A)


class Twin(metaclass=_EqualToA):
    """Not a subclass of ``A``, but a class equal to it: a dict keyed by ``A`` finds it."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Twin({self.n})"


class BadSubject(A):
    """A subject whose ``repr`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr of BadSubject")


class Boom(Exception):
    pass


class Fatal(BaseException):
    pass


class BadRepr(Exception):
    """An error whose ``repr`` raises (its ``str`` works)."""

    def __repr__(self) -> str:
        raise RuntimeError("repr of BadRepr")


class _Trace:
    def __init__(self) -> None:
        self.lines: List[Any] = []

    def log(self, *parts: Any) -> None:
        self.lines.append([describe(part) if isinstance(part, BaseException) else safe(repr, part) for part in parts])

    async def outcome(self, label: str, awaitable: Any) -> None:
        """Await ``awaitable`` and log its result or its error, whatever it is."""
        try:
            result = await awaitable
        except BaseException as error:  # noqa: B902
            self.lines.append([label, "raised", describe(error)])
        else:
            self.lines.append([label, "returned", describe(result)])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = normalise(record.getMessage())
        except BaseException as error:  # noqa: B902
            message = f"<message failed: {type(error).__name__}>"
        error = record.exc_info[1] if record.exc_info else None
        self.records.append([record.name, record.levelname, message, describe(error) if error else None])


def _creation(task: "asyncio.Task[Any]") -> int:
    """Tasks in the order they were made (``all_tasks`` is a set: its order varies)."""
    number = task.get_name().rpartition("-")[2]
    return int(number) if number.isdigit() else -1


def _finish(loop: asyncio.AbstractEventLoop, trace: _Trace) -> None:
    """Cancel what the program left running (it is logged), as ``asyncio.run`` does."""
    left = sorted((task for task in asyncio.all_tasks(loop) if not task.done()), key=_creation)
    if left:
        trace.lines.append(["tasks left running", len(left)])
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def run(source: str) -> Dict[str, Any]:
    trace = _Trace()
    records = _Records()
    loggers = [logging.getLogger("mediator"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(records)
    namespace: Dict[str, Any] = dict(PRELUDE, log=trace.log, outcome=trace.outcome)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop = asyncio.new_event_loop()
            try:
                exec(compile(source, "<program>", "exec"), namespace)
                loop.run_until_complete(namespace["main"]())
            except BaseException as error:  # noqa: B902
                trace.lines.append(["program raised", describe(error)])
            finally:
                try:
                    _finish(loop, trace)
                finally:
                    loop.close()
            namespace.clear()
            del loop
            gc.collect()
            found = sorted(
                [warning.category.__name__, normalise(str(warning.message))] for warning in caught
            )
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    return {"trace": trace.lines, "logged": records.records, "warnings": found}


PRELUDE: Dict[str, Any] = {
    "asyncio": asyncio,
    "types": types,
    "Hook": Hook,
    "ModifierFactory": ModifierFactory,
    "ActionSubject": ActionSubject,
    "ActionResult": ActionResult,
    "CallableHandlerPolicy": CallableHandlerPolicy,
    "LocalEventBus": LocalEventBus,
    "LocalRequestBus": LocalRequestBus,
    "A": A,
    "B": B,
    "C": C,
    "BadSubject": BadSubject,
    "Twin": Twin,
    "retry": retry,
    "timeout": timeout,
    "Boom": Boom,
    "Fatal": Fatal,
    "BadRepr": BadRepr,
}


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a program prints may reach the protocol
    logging.getLogger("mediator").propagate = False  # records go to the trace, not stderr
    logging.getLogger("asyncio").propagate = False
    out.write(json.dumps({"compiled": mediator.COMPILED}) + "\n")
    out.flush()
    for line in sys.stdin:
        result = run(json.loads(line)["source"])
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
