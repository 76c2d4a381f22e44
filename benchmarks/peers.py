"""This project against python-mediator 0.7.0 and other peers from PyPI, one process each.

    python benchmarks/peers.py --python .venv/bin/python

Each peer gets its own virtualenv under ``--venv-dir`` (default ``/tmp/mediator-peers``),
made from the base interpreter of ``--python`` and holding only its block of
``benchmarks/requirements-peers.txt``: python-mediator 0.7.0 is imported as ``mediator`` too,
so it never shares an environment with this project. This project runs on ``--python`` with
its compiled engine (refused if the extension is not built).

Each library runs the scenarios it can express, the same way as ``scenarios.py``: every cell
is a ratio to a direct ``await handler(x)`` of the very handler the library calls, measured
in the same process, best of interleaved rounds (baseline, library, baseline, ...) after a
warm-up. Before timing, a pass under ``sys.setprofile`` counts the calls of every handler
(each has its own code object) and checks the returned value, for the baseline and the
library alike, so a cell can only be a handler that really ran, exactly once per dispatch.

This file is both the driver and the worker (``--worker NAME``, run inside the peer's
virtualenv with ``python -I``); it imports nothing from this project at module level.
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUIREMENTS = HERE / "requirements-peers.txt"

OURS = "mediator (this project)"
LIBRARIES = (OURS, "python-mediator", "diator", "python-cqrs", "blinker")
SCENARIOS: Dict[str, str] = {
    "request": "`await handler(cmd)`",
    "request_inject": "`await handler(cmd, user=u)`",
    "publish_1": "`await handler(evt)`",
    "publish_10": "the 10 awaited in sequence",
}

Loop = Callable[[int], Awaitable[None]]


# -- timing (self-contained: the same method as scenarios.compare) ------------------


async def compare(
    baseline: Loop, scenario: Loop, iterations: int, rounds: int, round_seconds: float
) -> Dict[str, float]:
    """Best-of-rounds seconds per iteration of both loops, run interleaved, and their ratio.

    A round is ``iterations`` dispatches, fewer for a slow library so that one of its
    rounds lasts about ``round_seconds`` (never fewer than 1,000); both loops of a pair
    always run the same count.
    """
    warm = max(iterations // 10, 1)
    await baseline(warm)
    start = time.perf_counter()
    await scenario(warm)
    per_iteration = (time.perf_counter() - start) / warm
    count = max(min(iterations, int(round_seconds / per_iteration)), min(iterations, 1000))
    best_base = best_scenario = float("inf")
    for _ in range(rounds):
        for loop, is_base in ((baseline, True), (scenario, False)):
            start = time.perf_counter()
            await loop(count)
            elapsed = (time.perf_counter() - start) / count
            if is_base:
                best_base = min(best_base, elapsed)
            else:
                best_scenario = min(best_scenario, elapsed)
    return {
        "baseline_ns": best_base * 1e9,
        "scenario_ns": best_scenario * 1e9,
        "ratio": best_scenario / best_base,
        "iterations": count,
    }


# -- what every adapter builds --------------------------------------------------------


class Case(NamedTuple):
    """One scenario for one library, built once (registration), dispatched per iteration."""

    direct: Loop  # the baseline: the same handlers awaited directly
    via: Loop  # the library dispatching to them
    once: Callable[[], Awaitable[Any]]  # one dispatch through the library
    expected: Any  # what ``once`` must return (checked when not None)
    handlers: Sequence[types.CodeType]  # code objects that must each run once per dispatch


class Unsupported(Exception):
    """The library cannot express this scenario; the message is the table's footnote."""


def distinct(function: Callable[..., Any], name: str) -> Any:
    """A copy of ``function`` with its own code object (same bytecode), to count its calls."""
    code = function.__code__.replace(co_name=name)
    if sys.version_info >= (3, 11):
        code = code.replace(co_qualname=name)
    copy = types.FunctionType(code, function.__globals__, name, function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__annotations__ = dict(function.__annotations__)
    copy.__qualname__ = name
    copy.__module__ = function.__module__
    return copy


Call = Callable[..., Awaitable[Any]]


def request_case(execute: Call, handler: Call, command: Any) -> Case:
    async def direct(k: int) -> None:
        for _ in range(k):
            await handler(command)

    async def via(k: int) -> None:
        for _ in range(k):
            await execute(command)

    return Case(direct, via, lambda: execute(command), command, [_code(handler)])


def inject_case(execute: Call, handler: Call, command: Any, user: Any) -> Case:
    async def direct(k: int) -> None:
        for _ in range(k):
            await handler(command, user=user)

    async def via(k: int) -> None:
        for _ in range(k):
            await execute(command, user=user)

    return Case(direct, via, lambda: execute(command, user=user), user, [_code(handler)])


def publish_case(publish: Call, handlers: List[Call], event: Any) -> Case:
    async def direct(k: int) -> None:
        for _ in range(k):
            for handler in handlers:
                await handler(event)

    async def via(k: int) -> None:
        for _ in range(k):
            await publish(event)

    return Case(direct, via, lambda: publish(event), None, [_code(h) for h in handlers])


def _code(handler: Any) -> types.CodeType:
    return getattr(handler, "__func__", handler).__code__


def fanout(scenario: str) -> int:
    return {"publish_1": 1, "publish_10": 10}[scenario]


# -- adapters: one tiny function per library ------------------------------------------
#
# Each gets a scenario name and returns a Case, or raises Unsupported. Imports are local:
# the worker only imports the library it measures.


class Command:
    pass


class Event:
    pass


class User:
    pass


async def handle(command: Command) -> Command:
    return command


async def handle_with_user(command: Command, user: User) -> User:
    return user


async def _on_event(event: Event) -> None:
    return None


def _event_handlers(count: int) -> List[Any]:
    return [distinct(_on_event, f"on_event_{i}") for i in range(count)]


def adapt_ours(scenario: str) -> Case:
    """This project, compiled engine: the same calls as scenarios.py."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import mediator
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    if not mediator.COMPILED:
        raise SystemExit("the compiled engine is not built for this interpreter: pip install -e . first")
    if scenario == "request":
        bus = LocalRequestBus()
        bus.register(handle)
        return request_case(bus.execute, handle, Command())
    if scenario == "request_inject":
        bus = LocalRequestBus()
        bus.register(handle_with_user)
        return inject_case(bus.execute, handle_with_user, Command(), User())
    events = LocalEventBus(sync_mode=True)
    handlers = _event_handlers(fanout(scenario))
    for handler in handlers:
        events.register(handler)
    return publish_case(events.publish, handlers, Event())


def adapt_python_mediator(scenario: str) -> Case:
    """python-mediator 0.7.0: the API this project keeps; events with sync_mode=True."""
    import mediator
    from mediator.event import LocalEventBus
    from mediator.request import LocalRequestBus

    if hasattr(mediator, "COMPILED") or not mediator.__file__.startswith(sys.prefix):
        raise SystemExit(f"imported the wrong `mediator`: {mediator.__file__}")
    if scenario == "request":
        bus = LocalRequestBus()
        bus.register(handle)
        return request_case(bus.execute, handle, Command())
    if scenario == "request_inject":
        bus = LocalRequestBus()
        bus.register(handle_with_user)
        return inject_case(bus.execute, handle_with_user, Command(), User())
    events = LocalEventBus(sync_mode=True)  # each handler still runs in its own task
    handlers = _event_handlers(fanout(scenario))
    for handler in handlers:
        events.register(handler)
    return publish_case(events.publish, handlers, Event())


class _Instances:
    """The cheapest container diator and python-cqrs accept: one ready instance per class."""

    def __init__(self, *instances: Any) -> None:
        self._instances = {type(instance): instance for instance in instances}

    @property
    def external_container(self) -> Any:
        return self

    def attach_external_container(self, container: Any) -> None:
        pass

    async def resolve(self, type_: Any) -> Any:
        return self._instances[type_]


async def _handle_method(self: Any, request: Any) -> Any:
    return request


async def _on_event_method(self: Any, event: Any) -> None:
    return None


def _handler_classes(base: type, count: int) -> List[Any]:
    """``count`` handler classes (each ``handle`` its own code object), one instance each."""
    classes = [
        type(f"OnEvent{i}", (base,), {"handle": distinct(_on_event_method, f"on_event_{i}")}) for i in range(count)
    ]
    return [cls() for cls in classes]


def adapt_diator(scenario: str) -> Case:
    """diator: handler classes resolved from a container on every dispatch."""
    from dataclasses import dataclass

    from diator.events import DomainEvent, EventEmitter, EventMap
    from diator.mediator import Mediator
    from diator.requests import Request, RequestMap

    if scenario == "request":

        @dataclass(frozen=True, kw_only=True)
        class DiatorCommand(Request):
            pass

        class CommandHandler:
            def __init__(self) -> None:
                self.events: List[Any] = []

            handle = distinct(_handle_method, "handle")

        instance = CommandHandler()
        requests = RequestMap()
        requests.bind(DiatorCommand, CommandHandler)
        bus = Mediator(request_map=requests, container=_Instances(instance))
        return request_case(bus.send, instance.handle, DiatorCommand())
    if scenario == "request_inject":
        raise Unsupported("no per-call arguments: `send(request)` takes the request only")

    @dataclass(frozen=True, kw_only=True)
    class DiatorEvent(DomainEvent):
        pass

    instances = _handler_classes(object, fanout(scenario))
    event_map = EventMap()
    for instance in instances:
        event_map.bind(DiatorEvent, type(instance))
    emitter = EventEmitter(event_map=event_map, container=_Instances(*instances))
    return publish_case(emitter.emit, [instance.handle for instance in instances], DiatorEvent())


def adapt_python_cqrs(scenario: str) -> Case:
    """python-cqrs: RequestMediator / EventMediator built directly, no middleware."""
    import cqrs

    if scenario == "request":

        class CqrsCommand(cqrs.Request):
            pass

        class CommandHandler(cqrs.RequestHandler[CqrsCommand, CqrsCommand]):
            handle = distinct(_handle_method, "handle")

        instance = CommandHandler()
        requests = cqrs.RequestMap()
        requests.bind(CqrsCommand, CommandHandler)
        bus = cqrs.RequestMediator(request_map=requests, container=_Instances(instance))
        return request_case(bus.send, instance.handle, CqrsCommand())
    if scenario == "request_inject":
        raise Unsupported("no per-call arguments: `send(request)` takes the request only")

    class CqrsEvent(cqrs.DomainEvent):
        pass

    instances = _handler_classes(cqrs.EventHandler, fanout(scenario))
    event_map = cqrs.EventMap()
    for instance in instances:
        event_map.bind(CqrsEvent, type(instance))
    bus = cqrs.EventMediator(event_map=event_map, container=_Instances(*instances))
    return publish_case(bus.send, [instance.handle for instance in instances], CqrsEvent())


def adapt_blinker(scenario: str) -> Case:
    """blinker: one Signal, async receivers awaited in turn by ``send_async``."""
    from blinker import Signal

    if scenario in ("request", "request_inject"):
        raise Unsupported("signals only: no request/response dispatch")
    signal = Signal()
    handlers = _event_handlers(fanout(scenario))
    for handler in handlers:
        signal.connect(handler)  # receivers are called as receiver(sender): the event is the sender
    return publish_case(signal.send_async, handlers, Event())


ADAPTERS: Dict[str, Tuple[Callable[[str], Case], Optional[str]]] = {
    OURS: (adapt_ours, None),
    "python-mediator": (adapt_python_mediator, "python-mediator"),
    "diator": (adapt_diator, "diator"),
    "python-cqrs": (adapt_python_cqrs, "python-cqrs"),
    "blinker": (adapt_blinker, "blinker"),
}


# -- worker -------------------------------------------------------------------------


async def verify(case: Case, dispatches: int = 3) -> None:
    """Both loops run every handler exactly once per dispatch; the dispatch returns right."""
    counts = {id(code): 0 for code in case.handlers}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            key = id(frame.f_code)
            if key in counts:
                counts[key] += 1

    for name, loop in (("baseline", case.direct), ("library", case.via)):
        for key in counts:
            counts[key] = 0
        sys.setprofile(profile)
        try:
            await loop(dispatches)
        finally:
            sys.setprofile(None)
        wrong = {code.co_name: counts[id(code)] for code in case.handlers if counts[id(code)] != dispatches}
        if wrong:
            raise AssertionError(f"{name}: handler calls over {dispatches} dispatches: {wrong}")
    result = await case.once()
    if case.expected is not None and result is not case.expected:
        raise AssertionError(f"dispatch returned {result!r}, expected {case.expected!r}")


async def worker(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    adapter, distribution = ADAPTERS[name]
    results: Dict[str, Any] = {"python": f"{platform.python_implementation()} {platform.python_version()}"}
    for scenario in SCENARIOS:
        try:
            case = adapter(scenario)
        except Unsupported as reason:
            results[scenario] = {"unsupported": str(reason)}
            continue
        await verify(case)
        results[scenario] = await compare(case.direct, case.via, args.iterations, args.rounds, args.round_seconds)
    if distribution is None:
        import mediator

        results["version"] = mediator.__version__
    else:
        from importlib.metadata import version

        results["version"] = version(distribution)
    return results


# -- driver -------------------------------------------------------------------------


def peer_blocks() -> Dict[str, Tuple[List[str], List[str]]]:
    """requirements-peers.txt, split per peer: name -> (pip options, requirement lines)."""
    blocks: Dict[str, Tuple[List[str], List[str]]] = {}
    current: Optional[str] = None
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.strip()
        if line.startswith("# ["):
            header, _, options = line[3:].partition("]")
            current = header.strip()
            options = options.strip()
            blocks[current] = (options[len("pip:") :].split() if options.startswith("pip:") else [], [])
        elif line and not line.startswith("#") and current is not None:
            blocks[current][1].append(line)
    return blocks


def base_interpreter(python: str) -> str:
    """The interpreter ``python``'s virtualenv (if any) was made from."""
    code = "import sys; print(getattr(sys, '_base_executable', None) or sys.executable)"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def ensure_venv(name: str, options: List[str], pins: List[str], base: str, venv_dir: Path) -> str:
    """A virtualenv holding exactly ``pins`` (made once, reused while pins and base hold)."""
    venv = venv_dir / name
    python = venv / "bin" / "python"
    stamp_text = json.dumps({"base": base, "options": options, "pins": pins})
    stamp = venv / ".peers-stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == stamp_text:
        return str(python)
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists():
            raise RuntimeError(f"{venv} exists and is not a virtualenv: pick another --venv-dir")
        shutil.rmtree(venv)
    print(f"  creating {venv} ({', '.join(pins)})", file=sys.stderr)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    requirements = venv / "requirements.txt"
    requirements.write_text("\n".join(pins) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *options, "-r", str(requirements)],
        check=True,
    )
    stamp.write_text(stamp_text)
    return str(python)


def run_worker(python: str, name: str, args: argparse.Namespace, cwd: Path) -> Dict[str, Any]:
    # -I: neither the script's folder, the working directory nor PYTHONPATH on sys.path, so
    # in a peer's venv `import mediator` can only be the peer's (python-mediator 0.7.0).
    command = [python, "-I", str(HERE / "peers.py"), "--worker", name]
    command += ["--iterations", str(args.iterations), "--rounds", str(args.rounds)]
    command += ["--round-seconds", str(args.round_seconds)]
    env = {key: value for key, value in os.environ.items() if key != "MEDIATOR_NO_EXTENSIONS"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # the worker prints one JSON line last


def table(results: Dict[str, Dict[str, Any]], failures: Dict[str, str]) -> List[str]:
    names = [name for name in LIBRARIES if name in results or name in failures]
    notes: List[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    header = ["scenario", "baseline"]
    for name in names:
        if name in results:
            header.append(f"{name} {results[name]['version']}")
        else:
            header.append(f"{name} {note(f'{name}: not run: {failures[name]}')}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, baseline in SCENARIOS.items():
        cells = [scenario, baseline]
        for name in names:
            cell = results.get(name, {}).get(scenario)
            if cell is None:
                cells.append("—")
            elif "unsupported" in cell:
                cells.append("— " + note(f"{name}: {cell['unsupported']}"))
            else:
                cells.append(f"{cell['ratio']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    row = ["direct await, ns", "(`request` baseline)"]
    for name in names:
        cell = results.get(name, {}).get("request", {})
        row.append(f"{cell['baseline_ns']:.0f}" if "baseline_ns" in cell else "—")
    lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- [{i}] {text}" for i, text in enumerate(notes, 1)]
    return lines


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    except OSError:
        pass
    return f"{model}{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def default_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=default_python(), help="CPython with this project's compiled engine built")
    parser.add_argument("--venv-dir", default="/tmp/mediator-peers", help="where the peers' virtualenvs go")
    names = "mediator (this project), python-mediator, diator, python-cqrs, blinker"
    parser.add_argument("--only", nargs="*", default=None, help=f"some of: {names}")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=0.5, help="fewer iterations past this per round")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args))))
        return

    started = time.perf_counter()
    # Workers run in the venv folder: a relative --python (.venv/bin/python) must not be.
    args.python = os.path.abspath(shutil.which(args.python) or args.python)
    venv_dir = Path(args.venv_dir)
    venv_dir.mkdir(parents=True, exist_ok=True)
    base = base_interpreter(args.python)
    blocks = peer_blocks()
    results: Dict[str, Dict[str, Any]] = {}
    failures: Dict[str, str] = {}
    for name in LIBRARIES:
        if args.only and name not in args.only and not (name == OURS and "mediator" in args.only):
            continue
        print(f"{name}...", file=sys.stderr)
        try:
            if name == OURS:
                python = args.python
            else:
                options, pins = blocks[name]
                python = ensure_venv(name, options, pins, base, venv_dir)
            results[name] = run_worker(python, name, args, venv_dir)
        except (subprocess.CalledProcessError, RuntimeError, KeyError) as error:
            if name == OURS:
                raise SystemExit(f"{OURS}: {error}")
            failures[name] = str(error)
            print(f"  failed: {error}", file=sys.stderr)
    pythons = sorted({result["python"] for result in results.values()})
    print(f"Machine: {machine()}; {', '.join(pythons)}")
    print("\n".join(table(results, failures)))
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.json:
        raw = {"machine": machine(), "results": results, "failures": failures}
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
