"""Modifiers on both buses: ModifierFactory layers, ModifierStack, ActionSubject and Hook."""

import asyncio
import gc
from dataclasses import dataclass

import pytest

import mediator
from mediator import Hook
from mediator.common.factory import CallableHandlerPolicy
from mediator.common.modifiers import ModifierFactory, ModifierStack
from mediator.common.types import ActionResult, ActionSubject
from mediator.event import LocalEventBus
from mediator.request import LocalRequestBus

try:
    ExceptionGroup = ExceptionGroup  # noqa: A001 - builtin on 3.11+
except NameError:  # Python 3.9 / PyPy
    from exceptiongroup import ExceptionGroup  # noqa: A001


@dataclass
class Subject:
    value: int = 0


class Boom(Exception):
    pass


def run(coroutine):
    return asyncio.run(coroutine)


# --- helpers -------------------------------------------------------------------


class Bus:
    """One bus of either kind behind the same small interface.

    Handlers report their value through ``out(value)``: ``dispatch`` returns the handler's
    value for a request and, for an event (sync mode), the last value reported. A
    one-failure exception group from an event is turned back into that failure.
    """

    def __init__(self, kind, **options):
        self.kind = kind
        if kind == "request":
            self.bus = LocalRequestBus(**options)
        else:
            self.bus = LocalEventBus(sync_mode=True, **options)
        self.returned = []

    def out(self, value):
        self.returned.append(value)
        return value

    def register(self, handler, **options):
        return self.bus.register(handler, **options)

    async def dispatch(self, obj, **inject):
        if self.kind == "request":
            return await self.bus.execute(obj, **inject)
        try:
            await self.bus.publish(obj, **inject)
        except ExceptionGroup as group:
            assert len(group.exceptions) == 1, group.exceptions
            raise group.exceptions[0]
        return self.returned[-1] if self.returned else None


BUS_KINDS = pytest.mark.parametrize("kind", ["request", "event"])


class Layer(ModifierFactory):
    """A factory whose layer records entering and leaving, and the target it was given."""

    def __init__(self, name, log):
        self.name = name
        self.log = log
        self.targets = []

    def create(self, call, **kwargs):
        self.targets.append(kwargs.get("target"))

        async def layer(action):
            self.log.append(f"{self.name}>")
            try:
                result = await call(action)
            except Exception as error:
                self.log.append(f"{self.name}!{type(error).__name__}")
                raise
            self.log.append(f"<{self.name}")
            return result

        return layer


def hook(name, log):
    """A Hook (callable form) recording b<name>, a<name>, e<name>."""

    def before(subject, inject):
        log.append(f"b{name}")

    def after(subject, result):
        log.append(f"a{name}")
        return result

    def error(subject, exc):
        log.append(f"e{name}")

    return Hook(before=before, after=after, error=error)


def recording_handler(log, fail=False, out=lambda value: value):
    async def handler(subject: Subject):
        log.append("handler")
        if fail:
            raise Boom("handler failed")
        return out(subject.value)

    return handler


# --- ActionSubject / ActionResult ------------------------------------------------


def test_action_subject_key_is_the_subject_type():
    action = ActionSubject(Subject(1), {"a": 1})
    assert action.key is Subject
    assert ActionSubject("text", {}).key is str
    assert action.subject == Subject(1)
    assert action.inject == {"a": 1}
    assert ActionSubject(subject=Subject(1), inject={"a": 1}) == action  # keywords, as the 0.7 dataclass
    assert ActionResult(result=2).result == 2


def test_action_subject_equality_and_repr():
    assert ActionSubject(Subject(1), {"a": 1}) == ActionSubject(Subject(1), {"a": 1})
    assert ActionSubject(Subject(1), {"a": 1}) != ActionSubject(Subject(2), {"a": 1})
    assert ActionSubject(Subject(1), {"a": 1}) != ActionSubject(Subject(1), {"a": 2})
    assert ActionSubject(Subject(1), {}) != (Subject(1), {})
    text = repr(ActionSubject(Subject(1), {"a": 1}))
    assert text.startswith("ActionSubject(")
    assert "Subject(value=1)" in text and "{'a': 1}" in text


def test_action_result_equality_and_repr():
    assert ActionResult(3) == ActionResult(3)
    assert ActionResult(3) != ActionResult(4)
    assert ActionResult(3) != 3
    assert repr(ActionResult("x")) == "ActionResult(result='x')"


def test_action_subject_is_mutable():
    action = ActionSubject(Subject(1), {})
    action.subject = Subject(2)
    action.inject["a"] = 1
    assert action == ActionSubject(Subject(2), {"a": 1})


# --- ModifierStack ----------------------------------------------------------------


def test_modifier_stack_first_factory_is_outermost():
    log = []
    factories = [Layer("A", log), Layer("B", log), Layer("C", log)]

    async def call(action):
        log.append("call")
        return ActionResult(action.subject.value + 1)

    stacked = ModifierStack.build(factories, call)
    result = run(stacked(ActionSubject(Subject(1), {})))
    assert result == ActionResult(2)
    assert log == ["A>", "B>", "C>", "call", "<C", "<B", "<A"]
    # every layer is told the innermost callable
    assert all(factory.targets == [call] for factory in factories)


def test_modifier_stack_without_factories_is_the_call_itself():
    async def call(action):
        return ActionResult(None)

    assert ModifierStack.build([], call) is call


def test_modifier_factory_base_create_is_abstract():
    with pytest.raises(NotImplementedError):
        ModifierFactory().create(lambda action: None)


# --- ModifierFactory on the buses ----------------------------------------------------


@BUS_KINDS
def test_factory_layers_wrap_the_handler_in_order(kind):
    """Bus modifiers outermost, then register(..., modifiers=), first of each list outermost."""
    log = []
    bus = Bus(kind, modifiers=[Layer("bus1", log), Layer("bus2", log)])
    bus.register(recording_handler(log, out=bus.out), modifiers=[Layer("reg1", log), Layer("reg2", log)])
    assert run(bus.dispatch(Subject(5))) == 5
    assert log == ["bus1>", "bus2>", "reg1>", "reg2>", "handler", "<reg2", "<reg1", "<bus2", "<bus1"]


@BUS_KINDS
def test_factory_target_is_the_innermost_handler(kind):
    """target bypasses every other layer: calling it runs the handler alone."""
    log = []
    outer, inner = Layer("outer", log), Layer("inner", log)
    bus = Bus(kind, modifiers=[outer])

    class Bypass(ModifierFactory):
        def create(self, call, **kwargs):
            target = kwargs["target"]

            async def layer(action):
                log.append("bypass")
                return await target(action)

            return layer

    bus.register(recording_handler(log, out=bus.out), modifiers=[Bypass(), inner])
    assert run(bus.dispatch(Subject(3))) == 3
    assert log == ["outer>", "bypass", "handler", "<outer"]  # "inner" skipped
    target = outer.targets[0]
    assert target is inner.targets[0]
    result = run(target(ActionSubject(Subject(9), {})))
    assert isinstance(result, ActionResult)
    assert result.result == 9


@BUS_KINDS
def test_modifier_changes_inject_before_renaming_and_filtering(kind):
    """arg_map renaming and filtering apply to what the modifiers leave in action.inject."""
    seen = []

    class Rewrite(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                seen.append(dict(action.inject))
                action.inject.pop("drop", None)
                action.inject["src"] = "from-modifier"
                action.inject["junk"] = "filtered"
                return await call(action)

            return layer

    bus = Bus(kind, policies=[CallableHandlerPolicy(arg_map={"src": "dst"})], modifiers=[Rewrite()])

    async def handler(subject: Subject, dst=None, drop="default", keep=None):
        return bus.out({"dst": dst, "drop": drop, "keep": keep})

    bus.register(handler)
    result = run(bus.dispatch(Subject(), drop="given", keep="kept", src="from-caller"))
    assert seen == [{"drop": "given", "keep": "kept", "src": "from-caller"}]
    assert result == {"dst": "from-modifier", "drop": "default", "keep": "kept"}


@BUS_KINDS
def test_action_inject_with_nothing_injected_is_one_dict_the_layers_share(kind):
    """With no kwargs given, a layer still reads a dict: the same one each time, and
    what a layer adds or replaces there reaches the handler."""
    seen = []

    class Read(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                seen.append((dict(action.inject), action.inject, action.inject is action.inject, repr(action)))
                return await call(action)

            return layer

    class Add(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                action.inject["user"] = "added"
                assert action == ActionSubject(action.subject, {"user": "added"})
                return await call(action)

            return layer

    class Replace(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                action.inject = {"user": "replaced"}
                return await call(action)

            return layer

    for modifiers, expected in (([Read()], None), ([Read(), Add(), Read()], "added"), ([Replace(), Read()], "replaced")):
        bus = Bus(kind, modifiers=modifiers)

        async def handler(subject: Subject, user=None):
            return bus.out(user)

        bus.register(handler)
        seen.clear()
        assert run(bus.dispatch(Subject(1))) == expected
        if expected != "replaced":
            assert seen[0][0] == {} and seen[0][2] is True
            assert seen[0][3] == "ActionSubject(subject=Subject(value=1), inject={})"
        assert all(entry[1] is seen[0][1] for entry in seen)  # one dict for the whole stack
    assert ActionSubject(Subject(1), None).inject is None  # a given value is kept as it is


@BUS_KINDS
def test_modifier_can_replace_the_subject(kind):
    class Double(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                return await call(ActionSubject(Subject(action.subject.value * 2), action.inject))

            return layer

    bus = Bus(kind, modifiers=[Double()])
    bus.register(recording_handler([], out=bus.out))
    assert run(bus.dispatch(Subject(21))) == 42


def test_modifier_can_replace_the_result():
    class Replace(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                result = await call(action)
                return ActionResult(("replaced", result.result))

            return layer

    bus = LocalRequestBus(modifiers=[Replace()])
    bus.register(recording_handler([]))
    assert run(bus.execute(Subject(1))) == ("replaced", 1)


def test_modifier_can_answer_without_calling_the_handler():
    log = []

    class Cache(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                return ActionResult("cached")

            return layer

    bus = LocalRequestBus()
    bus.register(recording_handler(log), modifiers=[Cache()])
    assert run(bus.execute(Subject(1))) == "cached"
    assert log == []


class Keep(ModifierFactory):
    """A layer that keeps every ``keep_every``-th dispatch's ActionSubject and ActionResult,
    and records the inject each dispatch arrives with before adding to it."""

    def __init__(self, keep_every):
        self.keep_every = keep_every
        self.kept = []
        self.arrived_with = []

    def create(self, call, **kwargs):
        async def layer(action):
            self.arrived_with.append(dict(action.inject))
            action.inject["added"] = len(self.arrived_with)
            result = await call(action)
            if len(self.arrived_with) % self.keep_every == 0:
                self.kept.append((action, result, action.subject, result.result))
            return result

        return layer


@BUS_KINDS
@pytest.mark.parametrize("keep_every", [1, 2, 3])
def test_actions_and_results_a_layer_keeps_stay_as_they_were(kind, keep_every):
    # The engine may reuse the ActionSubject and ActionResult of a finished dispatch; one a
    # layer still holds must never be one of them.
    keep = Keep(keep_every)
    bus = Bus(kind, modifiers=[keep, Keep(10**9)])

    async def handler(subject: Subject, added=None):
        return bus.out((subject.value, added))

    bus.register(handler)

    async def main():
        return [await bus.dispatch(Subject(value)) for value in range(12)]

    assert run(main()) == [(value, value + 1) for value in range(12)]
    assert keep.arrived_with == [{}] * 12  # no dispatch sees what an earlier one injected
    assert len(keep.kept) == 12 // keep_every
    for action, result, subject, value in keep.kept:
        assert action.subject is subject and action.inject == {"added": value[1]}
        assert result.result == value and result.result[0] == subject.value
    assert len({id(action) for action, *_ in keep.kept}) == len(keep.kept)
    assert len({id(result) for _, result, *_ in keep.kept}) == len(keep.kept)


def test_a_subject_freed_as_its_dispatch_ends_may_dispatch_from_its_finalizer():
    started = []

    class Layer(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                return await call(action)

            return layer

    bus = LocalRequestBus(modifiers=[Layer(), Layer()])

    class Dying:
        def __init__(self, value):
            self.value = value

        def __del__(self):
            started.append(bus.execute(Subject(self.value)))  # awaited later

    async def handle_dying(subject: Dying):
        return ("dying", subject.value)

    async def handle_subject(subject: Subject):
        return ("subject", subject.value)

    bus.register(handle_dying)
    bus.register(handle_subject)

    async def main():
        results = [await bus.execute(Dying(value)) for value in range(5)]
        gc.collect()  # PyPy finalizes only when it collects (CPython has done it already)
        return results, sorted([await awaitable for awaitable in started])

    results, later = run(main())
    assert results == [("dying", value) for value in range(5)]
    assert later == [("subject", value) for value in range(5)]


def type_error_naming_the_handler(kind, factory):
    """The message of the TypeError a dispatch through ``factory`` raises, which must name
    the handler."""
    bus = Bus(kind)

    async def my_distinctive_handler(subject: Subject):
        return 1

    bus.register(my_distinctive_handler, modifiers=[factory])
    with pytest.raises(TypeError) as caught:
        run(bus.dispatch(Subject()))
    assert "my_distinctive_handler" in str(caught.value)
    return str(caught.value)


@BUS_KINDS
@pytest.mark.parametrize("callee", ["call", "target"])
def test_innermost_call_or_target_given_no_action_subject_is_a_type_error_naming_the_handler(kind, callee):
    class Unwrap(ModifierFactory):
        def create(self, call, **kwargs):
            inner = call if callee == "call" else kwargs["target"]

            async def layer(action):
                return await inner(action.subject)

            return layer

    assert "takes an ActionSubject, not Subject(value=0)" in type_error_naming_the_handler(kind, Unwrap())


@BUS_KINDS
def test_modifier_returning_a_non_action_result_is_a_type_error_naming_the_handler(kind):
    class Bad(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                await call(action)
                return "not an ActionResult"

            return layer

    assert "not an ActionResult" in type_error_naming_the_handler(kind, Bad())


@BUS_KINDS
def test_modifier_sees_handler_errors(kind):
    log = []
    bus = Bus(kind, modifiers=[Layer("outer", log)])
    bus.register(recording_handler(log, fail=True))
    with pytest.raises(Boom):
        run(bus.dispatch(Subject()))
    assert log == ["outer>", "handler", "outer!Boom"]


# --- Hook -------------------------------------------------------------------------


class AuthHook(Hook):
    """Subclass form: only before and after overridden."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def before(self, subject, inject):
        self.log.append(("before", subject.value, dict(inject)))
        inject["user"] = "alice"

    def after(self, subject, result):
        self.log.append(("after", result))
        return result * 10


@BUS_KINDS
def test_hook_subclass_form(kind):
    log = []
    bus = Bus(kind, modifiers=[AuthHook(log)])

    async def handler(subject: Subject, user=None):
        log.append(("handler", user))
        return bus.out(subject.value)

    bus.register(handler)
    result = run(bus.dispatch(Subject(4), trace="t"))
    assert log == [("before", 4, {"trace": "t"}), ("handler", "alice"), ("after", 4)]
    if kind == "request":
        assert result == 40


@BUS_KINDS
def test_hook_callable_form_before_adds_to_inject(kind):
    bus = Bus(kind)

    def before(subject, inject):
        inject["user"] = f"user-{subject.value}"

    async def handler(subject: Subject, user=None):
        return bus.out(user)

    bus.register(handler, modifiers=[Hook(before=before)])
    assert run(bus.dispatch(Subject(7))) == "user-7"


def test_hook_after_replaces_the_result():
    bus = LocalRequestBus(modifiers=[Hook(after=lambda subject, result: ("wrapped", result))])
    bus.register(recording_handler([]))
    assert run(bus.execute(Subject(2))) == ("wrapped", 2)


@BUS_KINDS
def test_hook_error_sees_the_exception_which_is_reraised(kind):
    seen = []
    raised = Boom("x")
    bus = Bus(kind)

    async def handler(subject: Subject):
        await asyncio.sleep(0)
        raise raised

    bus.register(handler, modifiers=[Hook(error=lambda subject, exc: seen.append((subject, exc)))])
    with pytest.raises(Boom) as caught:
        run(bus.dispatch(Subject(1)))
    assert caught.value is raised
    assert seen == [(Subject(1), raised)]


def test_hook_error_may_replace_the_exception():
    def error(subject, exc):
        raise ValueError("replaced")

    bus = LocalRequestBus()
    bus.register(recording_handler([], fail=True), modifiers=[Hook(error=error)])
    with pytest.raises(ValueError, match="replaced") as caught:
        run(bus.execute(Subject()))
    assert isinstance(caught.value.__context__, Boom)


def test_hook_after_is_not_called_on_error_nor_error_on_success():
    log = []
    bus = LocalRequestBus()
    bus.register(recording_handler(log, fail=True), modifiers=[hook("1", log)])

    async def pong(subject: str):
        return "ok"

    bus.register(pong, modifiers=[hook("2", log)])
    with pytest.raises(Boom):
        run(bus.execute(Subject()))
    assert run(bus.execute("s")) == "ok"
    assert log == ["b1", "handler", "e1", "b2", "a2"]


# Where hooks sit: all in the engine's loop (innermost), or some outside a factory.
def _hooks_only(log):
    return [hook("1", log), hook("2", log), hook("3", log)]


def _hooks_around_factory(log):
    return [hook("1", log), Layer("F", log), hook("2", log), hook("3", log)]


def _hooks_outside_factory(log):
    return [hook("1", log), hook("2", log), hook("3", log), Layer("F", log)]


STACKS = pytest.mark.parametrize(
    "stack", [_hooks_only, _hooks_around_factory, _hooks_outside_factory], ids=["hooks", "around", "outside"]
)


def _without_layer(log):
    return [entry for entry in log if "F" not in entry]


@BUS_KINDS
@STACKS
def test_hooks_unwind_like_nested_try_blocks(kind, stack):
    log = []
    bus = Bus(kind)
    bus.register(recording_handler(log), modifiers=stack(log))
    run(bus.dispatch(Subject()))
    assert _without_layer(log) == ["b1", "b2", "b3", "handler", "a3", "a2", "a1"]


@BUS_KINDS
@STACKS
def test_hooks_unwind_errors_in_reverse(kind, stack):
    log = []
    bus = Bus(kind)
    bus.register(recording_handler(log, fail=True), modifiers=stack(log))
    with pytest.raises(Boom):
        run(bus.dispatch(Subject()))
    assert _without_layer(log) == ["b1", "b2", "b3", "handler", "e3", "e2", "e1"]


@BUS_KINDS
@STACKS
def test_hook_before_raising_refuses_the_call(kind, stack):
    """A before that raises: no handler; only the hooks outside it see the error."""
    log = []
    refused = PermissionError("refused")
    hooks = stack(log)
    failing = [layer for layer in hooks if isinstance(layer, Hook)][1]  # the second hook

    def before(subject, inject):
        log.append("b2")
        raise refused

    failing.before = before
    bus = Bus(kind)
    bus.register(recording_handler(log), modifiers=hooks)
    with pytest.raises(PermissionError) as caught:
        run(bus.dispatch(Subject()))
    assert caught.value is refused
    assert _without_layer(log) == ["b1", "b2", "e1"]


@BUS_KINDS
@STACKS
def test_hook_error_stages_see_a_handler_that_binds_badly(kind, stack):
    """A required parameter nobody injects fails inside the hooks: their error stages see it."""
    log = []
    bus = Bus(kind)

    async def handler(subject: Subject, needed):
        log.append("handler")

    bus.register(handler, modifiers=stack(log))
    with pytest.raises(TypeError, match="needed"):
        run(bus.dispatch(Subject()))
    assert _without_layer(log) == ["b1", "b2", "b3", "e3", "e2", "e1"]


def _partial_hook(name, log, stages):
    """A Hook with only the given stages (no error stage unless asked), recording them."""

    def before(subject, inject):
        log.append(f"b{name}")
        inject["seen"] = inject.get("seen", "") + name

    def after(subject, result):
        log.append(f"a{name}")
        return f"{result}{name}"

    def error(subject, exc):
        log.append(f"e{name}")

    chosen = {"before": before, "after": after, "error": error}
    return Hook(**{stage: chosen[stage] for stage in stages})


# Stage layouts, outermost layer first: b = before, a = after, e = error.
LAYOUTS = ["b", "a", "ba", "b,a", "a,b", "ba,ba", "ba,b,a", "ba,ba,ba", "b,b,b", "a,a,a", "ba,ba,ba,ba", "b,a,b,a,b"]


def _expected(layout):
    """The log nested try blocks would give."""
    layers = layout.split(",")
    log = [f"b{index}" for index, stages in enumerate(layers) if "b" in stages] + ["handler"]
    return log + [f"a{index}" for index, stages in reversed(list(enumerate(layers))) if "a" in stages]


@BUS_KINDS
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hooks_without_error_stages_nest_like_try_blocks(kind, layout):
    log = []
    layers = layout.split(",")
    hooks = [_partial_hook(str(index), log, {"b": ["before"], "a": ["after"], "ba": ["before", "after"]}[stages])
             for index, stages in enumerate(layers)]
    bus = Bus(kind)

    async def handler(subject: Subject, seen=""):
        log.append("handler")
        return seen

    bus.register(handler, modifiers=hooks)
    result = run(bus.dispatch(Subject()))
    assert log == _expected(layout)
    befores = "".join(str(index) for index, stages in enumerate(layers) if "b" in stages)
    afters = "".join(str(index) for index, stages in reversed(list(enumerate(layers))) if "a" in stages)
    if kind == "request":
        assert result == befores + afters  # each before saw the inject dict, each after the result


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hooks_around_a_handler_of_the_subject_alone(layout):
    """The same layouts around ``fn(subject)``: nothing runs when execute is called; once
    awaited, the befores, the handler, and the afters on its result."""
    log = []
    layers = layout.split(",")
    hooks = [_partial_hook(str(index), log, {"b": ["before"], "a": ["after"], "ba": ["before", "after"]}[stages])
             for index, stages in enumerate(layers)]
    bus = LocalRequestBus()

    async def handler(subject: Subject):
        log.append("handler")
        return ""

    bus.register(handler, modifiers=hooks)

    async def main():
        awaitable = bus.execute(Subject())
        assert log == []
        return await awaitable

    assert run(main()) == "".join(str(index) for index, stages in reversed(list(enumerate(layers))) if "a" in stages)
    assert log == _expected(layout)


@pytest.mark.parametrize("layout", ["ba,ba,ba", "ba,ba,ba,ba"])
@pytest.mark.parametrize("fail", ["before", "handler", "after"])
def test_a_failure_inside_hooks_without_error_stages_propagates(layout, fail):
    log = []
    layers = layout.split(",")
    hooks = [_partial_hook(str(index), log, ["before", "after"]) for index in range(len(layers))]
    middle = hooks[1]
    if fail == "before":
        def before(subject, inject):
            log.append("b1")
            raise Boom("before")

        middle.before = before
    elif fail == "after":
        def after(subject, result):
            log.append("a1")
            raise Boom("after")

        middle.after = after
    bus = LocalRequestBus()
    bus.register(recording_handler(log, fail=fail == "handler"), modifiers=hooks)
    with pytest.raises(Boom):
        run(bus.execute(Subject()))
    if fail == "before":
        assert log == ["b0", "b1"]
    elif fail == "handler":
        assert log == [f"b{index}" for index in range(len(layers))] + ["handler"]
    else:
        inner = [f"a{index}" for index in range(len(layers) - 1, 1, -1)]
        assert log == [f"b{index}" for index in range(len(layers))] + ["handler"] + inner + ["a1"]


def test_mixed_hooks_and_factories_keep_the_documented_order():
    """Bus hooks/factories outside register's; hooks keep their place among factories."""
    log = []
    bus = LocalRequestBus(modifiers=[hook("1", log), Layer("F1", log)])
    bus.register(recording_handler(log), modifiers=[hook("2", log), Layer("F2", log), hook("3", log)])
    run(bus.execute(Subject()))
    assert log == ["b1", "F1>", "b2", "F2>", "b3", "handler", "a3", "<F2", "a2", "<F1", "a1"]

    log.clear()
    failing = LocalRequestBus(modifiers=[hook("1", log), Layer("F1", log)])
    failing.register(recording_handler(log, fail=True), modifiers=[hook("2", log), Layer("F2", log), hook("3", log)])
    with pytest.raises(Boom):
        run(failing.execute(Subject()))
    assert log == ["b1", "F1>", "b2", "F2>", "b3", "handler", "e3", "F2!Boom", "e2", "F1!Boom", "e1"]


def test_hook_after_raising_goes_to_the_outer_error_stages():
    log = []

    def bad_after(subject, result):
        log.append("a2")
        raise Boom("after failed")

    inner = hook("2", log)
    inner.after = bad_after
    bus = LocalRequestBus()
    bus.register(recording_handler(log), modifiers=[hook("1", log), inner, hook("3", log)])
    with pytest.raises(Boom, match="after failed"):
        run(bus.execute(Subject()))
    assert log == ["b1", "b2", "b3", "handler", "a3", "a2", "e1"]


@pytest.mark.parametrize("stage", ["before", "after", "error"])
def test_hook_stage_must_be_callable(stage):
    with pytest.raises(TypeError) as caught:
        Hook(**{stage: 5})
    assert stage in str(caught.value)
    assert "5" in str(caught.value)


def test_hook_is_a_modifier_factory_and_exported():
    assert issubclass(Hook, ModifierFactory)
    assert mediator.Hook is Hook
    assert mediator.ModifierFactory is ModifierFactory


def test_hook_used_directly_as_a_factory():
    """Hook.create gives an ordinary layer usable in ModifierStack.build."""
    log = []

    async def call(action):
        log.append(("call", dict(action.inject)))
        return ActionResult(action.subject.value)

    def before(subject, inject):
        log.append("before")
        inject["x"] = 1

    stacked = ModifierStack.build([Hook(before=before, after=lambda s, r: r + 1)], call)
    assert run(stacked(ActionSubject(Subject(1), {}))) == ActionResult(2)
    assert log == ["before", ("call", {"x": 1})]


def test_event_hooks_run_for_each_handler_separately():
    log = []
    bus = LocalEventBus(sync_mode=True, modifiers=[hook("bus", log)])

    async def first(subject: Subject):
        log.append("first")

    async def second(subject: Subject):
        log.append("second")

    bus.register(first, modifiers=[hook("1", log)])
    bus.register(second)
    run(bus.publish(Subject()))
    assert log == ["bbus", "b1", "first", "a1", "abus", "bbus", "second", "abus"]


class SetUser(ModifierFactory):
    """A factory layer that sets inject["user"] in place."""

    def create(self, call, **kwargs):
        async def layer(action):
            action.inject["user"] = "set-by-modifier"
            return await call(action)

        return layer


def _set_user(subject, inject):
    inject["user"] = "set-by-modifier"


@pytest.mark.parametrize("modifier", [Hook(before=_set_user), SetUser()], ids=["hook", "factory"])
@pytest.mark.parametrize("sync_mode", [True, False], ids=["sync", "background"])
def test_inject_changes_by_one_handlers_modifiers_do_not_leak_to_the_next(sync_mode, modifier):
    """A modifier registered on one event handler must not change what another receives."""
    seen = []
    bus = LocalEventBus(sync_mode=sync_mode)

    async def first(subject: Subject, user=None):
        seen.append(("first", user))

    async def second(subject: Subject, user=None):
        seen.append(("second", user))

    bus.register(first, modifiers=[modifier])
    bus.register(second)

    async def main():
        await bus.publish(Subject(), user="caller")
        for _ in range(3):
            await asyncio.sleep(0)

    run(main())
    assert sorted(seen) == [("first", "set-by-modifier"), ("second", "caller")]


def test_event_hook_before_refusing_is_reported_in_the_group():
    log = []
    bus = LocalEventBus(sync_mode=True)

    def refuse(subject, inject):
        raise PermissionError("nope")

    async def guarded(subject: Subject):
        log.append("guarded")

    async def open_(subject: Subject):
        log.append("open")

    bus.register(guarded, modifiers=[Hook(before=refuse)])
    bus.register(open_)
    with pytest.raises(ExceptionGroup) as caught:
        run(bus.publish(Subject()))
    assert log == ["open"]
    [error] = caught.value.exceptions
    assert isinstance(error, PermissionError)
    assert any("guarded" in note for note in error.__notes__)


# --- add_modifiers: wrapping a bus after the fact ---------------------------------


class Tag(ModifierFactory):
    """Appends its name to the log around the call, outermost name first."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def create(self, call, **kwargs):
        async def layer(action):
            self.log.append(self.name)
            return await call(action)

        return layer


@pytest.mark.parametrize("polymorphic", [False, True])
def test_add_modifiers_wraps_the_registered_handlers_and_the_later_ones_outermost(polymorphic):
    log = []
    bus = LocalRequestBus(modifiers=[Tag(log, "bus")], polymorphic=polymorphic)

    @bus.register
    async def first(subject: Subject):
        log.append("first")
        return subject.value

    async def main():
        assert await bus.execute(Subject(1)) == 1  # warms the polymorphic cache, if any
        bus.add_modifiers(Tag(log, "outer"), Hook(before=lambda subject, inject: log.append("hook")))

        @bus.register
        async def second(subject: Boom):
            log.append("second")

        assert await bus.execute(Subject(2)) == 2
        await bus.execute(Boom())

    run(main())
    assert log == ["bus", "first", "outer", "hook", "bus", "first", "outer", "hook", "bus", "second"]


@pytest.mark.parametrize("polymorphic", [False, True])
@pytest.mark.parametrize("strategy", ["sequential", "background"])
def test_add_modifiers_on_an_event_bus_keeps_the_handlers_in_registration_order(polymorphic, strategy):
    log = []
    bus = LocalEventBus(polymorphic=polymorphic, strategy=strategy)
    for name in ("a", "b"):

        async def handler(event: Subject, name=name):
            log.append(name)

        bus.register(handler)

    async def main():
        await bus.publish(Subject())
        await bus.drain()
        bus.add_modifiers(Tag(log, "outer"))

        @bus.register
        async def c(event: Subject):
            log.append("c")

        await bus.publish(Subject())
        await bus.drain()

    run(main())
    if strategy == "sequential":
        assert log == ["a", "b", "outer", "a", "outer", "b", "outer", "c"]
    else:
        assert sorted(log) == sorted(["a", "b", "outer", "a", "outer", "b", "outer", "c"])
    assert [len(handlers) for handlers in bus.registered().values()] == [3]


def test_add_modifiers_on_a_registry_reaches_the_bus_that_includes_it():
    from mediator.event import EventHandlerRegistry

    log = []
    registry = EventHandlerRegistry()

    @registry.register
    async def handler(event: Subject):
        log.append("handler")

    registry.add_modifiers(Tag(log, "registry"))
    bus = LocalEventBus(strategy="sequential")
    bus.include(registry)
    run(bus.publish(Subject()))
    assert log == ["registry", "handler"]


def test_add_modifiers_refuses_what_is_not_a_modifier_and_changes_nothing():
    log = []
    bus = LocalRequestBus()

    @bus.register
    async def handler(subject: Subject):
        log.append("handler")

    with pytest.raises(TypeError, match="not a ModifierFactory"):
        bus.add_modifiers(object())

    class Broken(ModifierFactory):
        def create(self, call, **kwargs):
            return None  # not callable: refused when the route is compiled

    with pytest.raises(TypeError, match="not callable"):
        bus.add_modifiers(Broken())
    bus.add_modifiers()  # nothing to add
    run(bus.execute(Subject()))
    assert log == ["handler"]
