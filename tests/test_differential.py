"""Differential test: random programs over the public API, run on both engines, must agree.

Hypothesis writes small programs (buses, handlers, hooks, modifier layers, policies,
publish strategies, dispatches awaited, gathered, run as tasks, closed, cancelled) as
Python source; ``differential_worker.py`` runs each one in two subprocesses, one per
engine, and returns a canonical trace of it: what the program's code logged (call order,
results, errors with their ``__cause__``/``__context__`` chains and notes), what the
``mediator`` and ``asyncio`` loggers received and the warnings raised. The two traces must
be equal; a divergence fails with the shrunk program, which reads as Python.

Runs: the quick profile (500 programs from a fixed seed per engine leg) in ``make test``;
``make fuzz`` (``MEDIATOR_FUZZ=1``, random seeds, 5,000 programs or
``MEDIATOR_FUZZ_EXAMPLES``) by hand. Nothing is compared where the compiled engine is not
built (PyPy): the test skips, saying so; on the compiled leg it always runs.

``KNOWN`` keeps the generator away from divergences already reported and being fixed;
``MEDIATOR_FUZZ_KNOWN_OFF=name,...`` (or ``all``) turns switches off to check a fix,
``MEDIATOR_FUZZ_SHRINK=0`` reports the first failing program unshrunk (faster).
A hang or a crash of either engine fails too, even when both agree on it.
"""

import json
import os
import platform
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

import hypothesis  # the `test` extra installs it: never skipped for want of it
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------------------
# KNOWN divergences, reported in issue 14 and being fixed on other branches. Each switch
# keeps the generator away from the program feature that hits the item it names, so this
# test passes on main meanwhile. Empty this set as the fixes land (then it must pass).
# --------------------------------------------------------------------------------------
KNOWN: Dict[str, str] = {
    "await-in-except": (
        "item 6 (still open, found by random seeds, not the CI seed): a handler behind "
        "modifiers=[retry(2), Hook(after=...)] on an event bus that suspends and then raises, in a "
        "concurrent publish awaited in an except block: the __context__ chain of its error "
        "differs between the engines (the publisher's handled error appears on one only)"
    ),
}


# MEDIATOR_FUZZ_KNOWN_OFF=name,name (or "all") generates those features anyway: to check a fix.
_OFF = os.environ.get("MEDIATOR_FUZZ_KNOWN_OFF", "")
for _name in list(KNOWN) if _OFF == "all" else [name for name in _OFF.split(",") if name]:
    KNOWN.pop(_name)  # a KeyError names a switch that does not exist


def allowed(feature: str) -> bool:
    return feature not in KNOWN


# --------------------------------------------------------------------------------------
# Profiles: quick and reproducible for `make test`, long and random for `make fuzz`.
# --------------------------------------------------------------------------------------
FUZZ = os.environ.get("MEDIATOR_FUZZ", "").lower() not in ("", "0", "false", "no")
EXAMPLES = int(os.environ.get("MEDIATOR_FUZZ_EXAMPLES", "5000" if FUZZ else "500"))
SHRINK = os.environ.get("MEDIATOR_FUZZ_SHRINK", "1").lower() not in ("", "0", "false", "no")
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None if not FUZZ else hypothesis.database.DirectoryBasedExampleDatabase(".hypothesis/differential"),
    print_blob=True,
    # MEDIATOR_FUZZ_SHRINK=0: report the first failing program as found (quicker, longer)
    phases=[phase for phase in hypothesis.Phase if phase != hypothesis.Phase.shrink or SHRINK],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
LEG_SEED = 0xD1FF + (1 if os.environ.get("MEDIATOR_NO_EXTENSIONS") else 0)  # each leg its own programs


def fixed_seed(test: Callable[..., Any]) -> Callable[..., Any]:
    return test if FUZZ else seed(LEG_SEED)(test)


# --------------------------------------------------------------------------------------
# Programs: Python source over the public API, in the worker's PRELUDE names.
# --------------------------------------------------------------------------------------
class Program:
    """A generated program; its repr is its source, so a failure shows readable code."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __repr__(self) -> str:
        return "Program('''\n" + self.source + "''')"


HANDLER_ERRORS = ["Boom", "ValueError", "KeyError", "StopIteration", "asyncio.CancelledError", "Fatal", "BadRepr"]


class Writer:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def draw_error(draw: Any, name: str, choices: List[str]) -> str:
    cls = draw(st.sampled_from(choices))
    raised = f'{cls}("{name}")'
    if cls in ("Boom", "ValueError") and draw(st.booleans()):
        raised += f' from KeyError("{name} cause")'
    return raised


def error_choices(state: "State", *, sync_or_hook: bool) -> List[str]:
    choices = list(HANDLER_ERRORS)
    if not state.request and not allowed("base-exception-in-awaited-publish"):
        choices.remove("Fatal")
    if sync_or_hook and not allowed("stopiteration-sync-or-hook"):
        choices.remove("StopIteration")
    return choices


class State:
    """What the program drawn so far has, for the draws that depend on it."""

    def __init__(self) -> None:
        self.request = False
        self.raising_error_hooks = 0
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


def draw_hook(draw: Any, out: Writer, state: State) -> str:
    name = state.name("H")
    out(0, f"class {name}(Hook):")
    stages = draw(st.sets(st.sampled_from(["before", "after", "error"]), min_size=0, max_size=3))
    if not stages:
        out(1, "pass")
    errors = error_choices(state, sync_or_hook=True)
    if "before" in stages:
        out(1, "def before(self, subject, inject):")
        out(2, f'log("{name}.before", subject, sorted(inject))')
        if draw(st.booleans()):
            out(2, f'inject["y"] = "{name}"')
        if draw(st.integers(0, 5)) == 0:
            out(2, "raise " + draw_error(draw, f"{name}.before", errors))
    if "after" in stages:
        out(1, "def after(self, subject, result):")
        out(2, f'log("{name}.after", subject, result)')
        action = draw(st.sampled_from(["same", "replace", "raise"]))
        if action == "raise":
            out(2, "raise " + draw_error(draw, f"{name}.after", errors))
        else:
            out(2, "return result" if action == "same" else f'return ("{name}", result)')
    if "error" in stages:
        out(1, "def error(self, subject, error):")
        out(2, f'log("{name}.error", subject, error)')
        may_raise = allowed("raising-error-hooks") or state.raising_error_hooks == 0
        if may_raise and draw(st.booleans()):
            state.raising_error_hooks += 1
            if not allowed("error-hook-raising-base-exception"):
                errors = [error for error in errors if error not in ("asyncio.CancelledError", "Fatal")]
            out(2, "raise " + draw_error(draw, f"{name}.error", errors))
    out(0, "")
    return f"{name}()"


def draw_factory(draw: Any, out: Writer, state: State) -> str:
    name = state.name("M")
    kinds = ["async"]
    if allowed("plain-function-layer"):
        kinds.append("plain")
    if allowed("generator-coroutine"):
        kinds.append("generator")
    kind = draw(st.sampled_from(kinds))
    out(0, f"class {name}(ModifierFactory):")
    out(1, "def create(self, call, **kwargs):")
    if kind == "plain":
        out(2, "return lambda action: call(action)")
        out(0, "")
        return f"{name}()"
    if kind == "generator":
        out(2, "@types.coroutine")
        out(2, "def layer(action):")
        out(3, f'log("{name}.in", action.subject)')
        out(3, "result = yield from call(action).__await__()")
        out(3, f'log("{name}.out", result.result)')
        out(3, "return result")
        out(2, "return layer")
        out(0, "")
        return f"{name}()"
    out(2, "async def layer(action):")
    out(3, f'log("{name}.in", action.subject, sorted(action.inject))')
    inject = draw(st.sampled_from(["keep", "dict", "mapping"] if allowed("non-dict-inject") else ["keep", "dict"]))
    if inject == "dict":
        out(3, f'action = ActionSubject(action.subject, dict(action.inject, x="{name}"))')
    elif inject == "mapping":
        out(3, "action = ActionSubject(action.subject, types.MappingProxyType(dict(action.inject)))")
    if draw(st.booleans()):
        out(3, "await asyncio.sleep(0)")
    if draw(st.integers(0, 6)) == 0:
        out(3, "raise " + draw_error(draw, f"{name}.in", error_choices(state, sync_or_hook=False)))
    catch = draw(st.sampled_from(["none", "recover", "reraise", "replace"]))
    if catch == "none":
        out(3, "result = await call(action)")
    else:
        out(3, "try:")
        out(4, "result = await call(action)")
        out(3, "except Exception as error:")
        out(4, f'log("{name}.caught", error)')
        if catch == "recover":
            out(4, f'return ActionResult("{name} recovered")')
        elif catch == "reraise":
            out(4, "raise")
        else:
            out(4, f'raise Boom("{name} replaced") from error')
    out(3, f'log("{name}.out", result.result)')
    end = draw(st.sampled_from(["same", "replace", "same", "not-a-result"]))
    if end == "same":
        out(3, "return result")
    elif end == "replace":
        out(3, f'return ActionResult(("{name}", result.result))')
    else:
        out(3, "return result.result")
    out(2, "return layer")
    out(0, "")
    return f"{name}()"


def draw_layers(draw: Any, out: Writer, state: State, most: int) -> List[str]:
    layers = []
    for _ in range(draw(st.integers(0, most))):
        kind = draw(st.sampled_from(["hook", "factory", "hook", "factory", "ready"]))
        if kind == "hook":
            layers.append(draw_hook(draw, out, state))
        elif kind == "factory":
            layers.append(draw_factory(draw, out, state))
        else:  # the ready modifiers (no real deadline is ever reached: nothing here waits)
            ready = ["retry(2)", "retry(3, on=(Boom, KeyError))"]
            ready += ["timeout(60)"] if allowed("plain-function-layer") else []
            layers.append(draw(st.sampled_from(ready)))
    return layers


def draw_handler(draw: Any, out: Writer, state: State, request: bool, cls: str, taken: List[str]) -> None:
    name = state.name("h")
    kinds = ["async", "sync"] + (["stream"] if request else [])
    kind = draw(st.sampled_from(kinds))
    layers = draw_layers(draw, out, state, 2)
    # the signature, and a policy that fits it
    subject = draw(st.sampled_from(["e", "subject"]))
    params = draw(st.lists(st.sampled_from(["x", "y", "z"]), unique=True, max_size=3))
    varkw = draw(st.booleans())
    policy = []
    if draw(st.booleans()):
        if draw(st.booleans()):
            policy.append(f'subject_arg="{subject}"')
        if params and draw(st.booleans()):
            target = draw(st.sampled_from(params))
            source = draw(st.sampled_from(["x", "y", "z", "w"]))
            policy.append(f'arg_map={{"{source}": "{target}"}}')
        if draw(st.booleans()):
            policy.append("arg_strict=True")
    options = []
    if policy:
        options.append(f"policies=[CallableHandlerPolicy({', '.join(policy)})]")
    if layers:
        options.append(f"modifiers=[{', '.join(layers)}]")
    out(0, f"@bus.register({', '.join(options)})" if options else "@bus.register")
    signature = [f"{subject}: {cls}"] + [f"{param}=None" for param in params] + (["**kw"] if varkw else [])
    prefix = "def" if kind == "sync" else "async def"
    out(0, f"{prefix} {name}({', '.join(signature)}):")
    shown = ", ".join([subject] + params + (["sorted(kw)"] if varkw else []))
    out(1, f'log("{name}", {shown})')
    if kind == "stream":
        for item in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                out(1, "await asyncio.sleep(0)")
            out(1, f'yield "{name}.{item}"')
        if draw(st.booleans()):
            out(1, "raise " + draw_error(draw, name, error_choices(state, sync_or_hook=False)))
        out(0, "")
        return
    if kind == "async":
        for _ in range(draw(st.integers(0, 2))):
            out(1, "await asyncio.sleep(0)")
        if cls not in ("C", "object") and draw(st.integers(0, 4)) == 0:  # C's handlers do not nest
            nested = "bus.execute(C(99))" if request else "bus.publish(C(99))"
            out(1, f'await outcome("{name} nested", {nested})')
    end = draw(st.sampled_from(["return", "raise", "awaitable"] if kind == "sync" else ["return", "raise"]))
    if end == "return":
        out(1, f'return "{name} result"')
    elif end == "awaitable":
        out(1, f'return later("{name} later")')
    else:
        # item 3 (a sync handler's CancelledError escapes a background publish) is the same on
        # both engines: no divergence to exclude
        errors = error_choices(state, sync_or_hook=kind == "sync")
        out(1, "raise " + draw_error(draw, name, errors))
    out(0, "")


SUBJECTS = ["A", "B", "C"]


def draw_dispatch(draw: Any, out: Writer, state: State, index: int, request: bool, later: List[str]) -> None:
    subjects = SUBJECTS + (["BadSubject"] if allowed("subject-with-raising-repr") else [])
    subjects += ["Twin"] if allowed("metaclass-equality") else []
    label = f"d{index}"

    def call() -> str:
        cls = draw(st.sampled_from(subjects))
        kwargs = draw(st.lists(st.sampled_from(["x", "y", "z", "w"]), unique=True, max_size=3))
        args = [f"{cls}({index})"]
        if not request and draw(st.integers(0, 4)) == 0:
            args.append(f'strategy="{draw(st.sampled_from(["background", "concurrent", "sequential"]))}"')
        args += [f"{kwarg}={index}" for kwarg in kwargs]
        return f"bus.{'execute' if request else 'publish'}({', '.join(args)})"

    modes = ["await", "await", "gather", "task", "cancel", "close", "drop"]
    if request:
        modes.append("stream")
    if allowed("await-in-except"):
        modes.append("except")
    if allowed("await-twice"):
        modes.append("twice")
    mode = draw(st.sampled_from(modes))
    if mode == "await":
        out(1, f'await outcome("{label}", {call()})')
    elif mode == "gather":
        calls = ", ".join(call() for _ in range(draw(st.integers(2, 3))))
        flag = draw(st.booleans())
        out(1, f'await outcome("{label}", asyncio.gather({calls}, return_exceptions={flag}))')
    elif mode == "task":
        out(1, f"{label} = asyncio.ensure_future({call()})")
        later.append(label)
    elif mode == "cancel":
        out(1, f"{label} = asyncio.ensure_future({call()})")
        for _ in range(draw(st.integers(0, 3))):
            out(1, "await asyncio.sleep(0)")
        out(1, f"{label}.cancel()")
        out(1, f'await outcome("{label}", {label})')
    elif mode == "close":
        out(1, f"{label} = {call()}")
        out(1, f"{label}.close()")
        out(1, f"del {label}")
    elif mode == "drop":  # never awaited: a RuntimeWarning
        out(1, f"{call()}")
    elif mode == "stream":
        cls = draw(st.sampled_from(subjects))
        limit = draw(st.integers(0, 3))
        out(1, f'await outcome("{label}", collect(bus.stream({cls}({index})), {limit}))')
    elif mode == "except":
        out(1, "try:")
        out(2, 'raise Boom("outer")')
        out(1, "except Boom:")
        out(2, f'await outcome("{label}", {call()})')
    else:
        out(1, f"{label} = {call()}")
        out(1, f'await outcome("{label}", {label})')
        out(1, f'await outcome("{label} again", {label})')


@st.composite
def programs(draw: Any) -> Program:
    out = Writer()
    state = State()
    request = state.request = draw(st.booleans())
    layers = draw_layers(draw, out, state, 2)
    options = []
    if layers:
        options.append(f"modifiers=[{', '.join(layers)}]")
    if draw(st.booleans()):
        options.append("polymorphic=True")
    if not request:
        strategy = draw(st.sampled_from([None, "background", "concurrent", "sequential", "sync_mode", "custom"]))
        if strategy == "sync_mode":
            options.append("sync_mode=True")
        elif strategy == "custom":
            draw_strategy(draw, out)
            options.append("strategy=custom")
        elif strategy is not None:
            options.append(f'strategy="{strategy}"')
        if draw(st.booleans()):
            out(0, "def on_error(error, event, handler):")
            out(1, 'log("on_error", error, event, handler)')
            out(0, "")
            options.append("on_error=on_error")
        if draw(st.booleans()):
            options.append(f"max_pending={draw(st.integers(1, 3))}")
    out(0, f"bus = {'LocalRequestBus' if request else 'LocalEventBus'}({', '.join(options)})")
    out(0, "")
    taken: List[str] = []
    for _ in range(draw(st.integers(1, 4))):
        free = [cls for cls in SUBJECTS + ["object"] if cls not in taken or not request]
        if not free:
            break
        cls = draw(st.sampled_from(free))
        taken.append(cls)
        draw_handler(draw, out, state, request, cls, taken)
    out(0, "async def main():")
    later: List[str] = []
    for index in range(draw(st.integers(1, 4))):
        draw_dispatch(draw, out, state, index, request, later)
    for label in later:
        out(1, f'await outcome("{label}", {label})')
    if not request:
        out(1, 'await outcome("aclose", bus.aclose(timeout=5))')
    return Program(helpers(out.text()))


HELPERS = {
    "later(": """\
async def later(value):
    await asyncio.sleep(0)
    return value
""",
    "collect(": """\
async def collect(stream, limit):
    items = []
    async with stream:
        async for item in stream:
            items.append(item)
            if len(items) >= limit:
                break
    return items
""",
}


def helpers(source: str) -> str:
    """``source`` after the helper functions it calls."""
    return "".join(helper + "\n" for call, helper in HELPERS.items() if call in source) + source


def draw_strategy(draw: Any, out: Writer) -> None:
    kinds = ["start", "spawn", "gather"] + (["generator"] if allowed("generator-coroutine") else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "generator":
        out(0, "@types.coroutine")
        out(0, "def custom(event, runs):")
        out(1, 'log("custom", event, len(runs))')
        out(1, "for run in runs:")
        out(2, "yield from run.start().__await__()")
    else:
        out(0, "async def custom(event, runs):")
        out(1, 'log("custom", event, len(runs))')
        if kind == "start":
            out(1, "for run in runs:")
            out(2, "await run.start()")
        elif kind == "spawn":
            out(1, "for run in runs:")
            out(2, "run.spawn()")
        else:
            out(1, 'log("custom gathered", await asyncio.gather(*(run.start() for run in runs), return_exceptions=True))')
    if draw(st.integers(0, 4)) == 0:
        out(1, 'raise Boom("custom")')
    out(0, "")


# --------------------------------------------------------------------------------------
# The two engines, each in a worker process that runs program after program.
# --------------------------------------------------------------------------------------
WORKER = Path(__file__).with_name("differential_worker.py")
TIMEOUT = 10.0  # seconds a program may take: far more than any needs; past it, it hangs


def _pump(stream: Any, lines: "queue.Queue[str]") -> None:
    with stream:
        for line in stream:
            lines.put(line)
    lines.put("")  # end of file: the worker died


class Engine:
    """One worker process on one engine; restarted after a hang or a crash."""

    def __init__(self, pure: bool) -> None:
        self.pure = pure
        self.process: Optional["subprocess.Popen[str]"] = None
        self.compiled = False

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("MEDIATOR_NO_EXTENSIONS", None)
        if self.pure:
            env["MEDIATOR_NO_EXTENSIONS"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        # a thread reads the answers (select() cannot wait on a pipe on Windows)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=_pump, args=(self.process.stdout, self.lines), daemon=True).start()
        self.compiled = json.loads(self._read(60.0))["compiled"]

    def _read(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if not line:
            raise EOFError
        return line

    def run(self, source: str) -> Dict[str, Any]:
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"source": source}) + "\n")
            self.process.stdin.flush()
            return json.loads(self._read(TIMEOUT))
        except TimeoutError:
            self.stop()
            return {"hung": f"no answer in {TIMEOUT}s"}
        except (EOFError, BrokenPipeError):
            code = self.stop()
            return {"crashed": f"the worker died (exit code {code})"}

    def stop(self) -> Optional[int]:
        process, self.process = self.process, None
        if process is None:
            return None
        process.kill()
        code = process.wait()
        if process.stdin is not None:
            process.stdin.close()
        return code  # its reader thread ends at the end of its stdout


@pytest.fixture(scope="module")
def engines():
    if platform.python_implementation() != "CPython":
        pytest.skip(
            f"the compiled engine does not exist on {platform.python_implementation()}: "
            "there is no second engine to compare the pure one with"
        )
    compiled, pure = Engine(pure=False), Engine(pure=True)
    try:
        compiled.start()
        pure.start()
        assert not pure.compiled, "MEDIATOR_NO_EXTENSIONS=1 did not give the pure engine"
        if not compiled.compiled:
            import mediator

            if mediator.COMPILED:  # the compiled leg: it must compare, never skip
                pytest.fail("the compiled engine is loaded here but not in the worker process")
            pytest.skip(
                "the compiled engine is not built on this interpreter (PyPy, or no extension): "
                "there is no second engine to compare the pure one with"
            )
        yield compiled, pure
    finally:
        compiled.stop()
        pure.stop()


def difference(compiled: Dict[str, Any], pure: Dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(compiled) | set(pure)):
        left, right = compiled.get(key), pure.get(key)
        if left == right:
            continue
        if isinstance(left, list) and isinstance(right, list):
            for at in range(max(len(left), len(right))):
                a = left[at] if at < len(left) else "<none>"
                b = right[at] if at < len(right) else "<none>"
                if a != b:
                    lines.append(f"{key}[{at}]:\n  compiled: {json.dumps(a)}\n  pure:     {json.dumps(b)}")
                    break
        else:
            lines.append(f"{key}:\n  compiled: {json.dumps(left)}\n  pure:     {json.dumps(right)}")
    return "\n".join(lines)


@fixed_seed
@PROFILE
@given(program=programs())
def test_engines_agree_on_random_programs(engines: Any, program: Program) -> None:
    compiled, pure = engines
    left = compiled.run(program.source)
    right = pure.run(program.source)
    for engine, trace in (("compiled", left), ("pure", right)):  # a bug on either, even on both
        assert "hung" not in trace and "crashed" not in trace, f"{engine}: {trace}\n{program.source}"
        # A program that raised left its own tasks unawaited: their errors are its to lose
        # (both engines must still agree on them, below).
        aborted = any(line[0] == "program raised" for line in trace["trace"])
        lost = [record for record in trace["logged"] if "never retrieved" in record[2] and not aborted]
        assert not lost, f"{engine} lost errors: {lost}\n{program.source}"
    assert left == right, "the engines disagree on this program:\n" + program.source + "\n" + difference(left, right)
