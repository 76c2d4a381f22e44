"""Cascade configuration, mappers, policy replacement, handler entries, stores and registries."""

import asyncio
from dataclasses import dataclass

import pytest

from mediator import Hook
from mediator.common.factory import (
    CallableHandlerFactory,
    CallableHandlerPolicy,
    ConfigHandlerFactoryCascadeError,
    DefaultHandlerFactoryMapper,
    HandlerFactory,
    HandlerFactoryCascade,
    HandlerFactoryCascadeError,
    HandlerFactoryMapper,
    IncompatibleHandlerFactoryCascadeError,
    IncompatibleHandlerFactoryError,
    MappablePolicy,
    MethodHandlerFactory,
    MethodHandlerPolicy,
    TypeHandlerFactoryMapper,
)
from mediator.common.handler import Handler
from mediator.common.modifiers import ModifierFactory
from mediator.common.registry import (
    CollectionHandlerStore,
    CollisionHandlerStoreError,
    HandlerEntry,
    HandlerRegistry,
    HandlerStoreError,
    LookupHandlerStoreError,
    MappingHandlerStore,
    ModifierHandlerStore,
)
from mediator.common.types import ActionResult, ActionSubject
from mediator.event import EventHandlerRegistry, LocalEventBus
from mediator.request import LocalRequestBus, RequestHandlerRegistry


class Foo:
    pass


class Bar:
    pass


# --- helpers -------------------------------------------------------------------------------


class Recorder(ModifierFactory):
    """A real modifier layer that logs its name on the way in and ``name/out`` on the way out."""

    def __init__(self, name, log):
        self.name = name
        self.log = log
        self.targets = []

    def create(self, call, **kwargs):
        self.targets.append(kwargs.get("target"))
        name, log = self.name, self.log

        async def layer(action):
            log.append(name)
            result = await call(action)
            log.append(name + "/out")
            return result

        return layer

    def __repr__(self):
        return f"Recorder({self.name!r})"


def recording_hook(name, log):
    def after(subject, result):
        log.append(name + "/out")
        return result

    return Hook(before=lambda subject, inject: log.append(name), after=after)


LAYER_KINDS = {"factory": Recorder, "hook": recording_hook}


def handler_of(fn, *policies):
    return HandlerFactoryCascade(policies or [CallableHandlerPolicy()])(fn)


async def on_foo(x: Foo):
    return ("foo", x)


async def on_bar(x: Bar):
    return ("bar", x)


async def also_on_foo(x: Foo):
    return ("also foo", x)


def run_action(call, subject, **inject):
    async def main():
        return await call(ActionSubject(subject, inject))

    return asyncio.run(main())


# --- the cascade's configuration -------------------------------------------------------------------


@pytest.mark.parametrize("policies", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_cascade_without_policies_is_a_config_error(policies):
    with pytest.raises(ConfigHandlerFactoryCascadeError) as info:
        HandlerFactoryCascade(policies)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HandlerFactoryCascadeError)


def test_cascade_accepts_a_one_shot_iterable_of_policies():
    cascade = HandlerFactoryCascade(policy for policy in [MethodHandlerPolicy("handle"), CallableHandlerPolicy()])
    assert cascade(on_foo).key is Foo
    assert cascade(on_bar).key is Bar, "the policies must be kept, not consumed by the first call"


def test_cascade_rejects_an_unmapped_policy_type_by_name():
    class Unknown(MappablePolicy):
        def __repr__(self):
            return "Unknown()"

    with pytest.raises(TypeError) as info:
        HandlerFactoryCascade([Unknown()])
    assert "Unknown()" in str(info.value)


def test_replace_returns_a_new_cascade_and_keeps_the_original():
    cascade = HandlerFactoryCascade([CallableHandlerPolicy()])
    replaced = cascade.replace([MethodHandlerPolicy("handle")])
    assert isinstance(replaced, HandlerFactoryCascade) and replaced is not cascade
    assert cascade(on_foo).key is Foo
    with pytest.raises(IncompatibleHandlerFactoryCascadeError) as info:
        replaced(on_foo)
    [(factory, _)] = info.value.factory_errors
    assert isinstance(factory, MethodHandlerFactory)


def test_replace_keeps_the_mapper():
    """A custom policy type mapped on the cascade stays usable through ``replace``."""
    mapper = DefaultHandlerFactoryMapper({TagPolicy: TagFactory})
    cascade = HandlerFactoryCascade([CallableHandlerPolicy()], mapper=mapper)
    handler = cascade.replace([TagPolicy("x")])(TaggedHandler())
    assert isinstance(handler, TagHandler)
    with pytest.raises(TypeError):
        HandlerFactoryCascade([CallableHandlerPolicy()]).replace([TagPolicy("x")])


def test_replace_with_no_policies_is_a_config_error():
    with pytest.raises(ConfigHandlerFactoryCascadeError):
        HandlerFactoryCascade([CallableHandlerPolicy()]).replace([])


# --- a custom policy type, factory and handler -----------------------------------------------------


@dataclass
class TagPolicy(MappablePolicy):
    """Handlers are objects with a ``handles`` class and an async ``run(subject)``."""

    tag: str


class TagHandler(Handler):
    def __init__(self, obj, tag):
        self._obj = obj
        self.tag = tag

    @property
    def key(self):
        return self._obj.handles

    @property
    def obj(self):
        return self._obj

    async def __call__(self, action):
        return ActionResult((self.tag, await self._obj.run(action.subject)))


class TagFactory(HandlerFactory):
    def __init__(self, policy):
        self.policy = policy

    def create(self, obj):
        if not hasattr(obj, "handles"):
            raise IncompatibleHandlerFactoryError(f"{obj!r} has no 'handles'")
        return TagHandler(obj, self.policy.tag)


class TaggedHandler:
    handles = Foo

    async def run(self, subject):
        return subject


def test_type_mapper_maps_by_policy_type():
    mapper = TypeHandlerFactoryMapper({CallableHandlerPolicy: CallableHandlerFactory, TagPolicy: TagFactory})
    assert isinstance(mapper, HandlerFactoryMapper)
    factories = mapper.map_all([TagPolicy("a"), CallableHandlerPolicy()])
    assert [type(factory) for factory in factories] == [TagFactory, CallableHandlerFactory]
    assert factories[0].policy == TagPolicy("a")


def test_type_mapper_rejects_an_unmapped_type_naming_the_policy():
    mapper = TypeHandlerFactoryMapper({CallableHandlerPolicy: CallableHandlerFactory})
    policy = MethodHandlerPolicy("on_event")
    with pytest.raises(TypeError) as info:
        mapper.map(policy)
    assert "on_event" in str(info.value)


def test_type_mapper_prefers_the_exact_type():
    class SpecialPolicy(CallableHandlerPolicy):
        pass

    mapper = TypeHandlerFactoryMapper({CallableHandlerPolicy: CallableHandlerFactory, SpecialPolicy: TagFactory})
    assert type(mapper.map(SpecialPolicy())) is TagFactory
    assert type(mapper.map(CallableHandlerPolicy())) is CallableHandlerFactory


def test_default_mapper_maps_the_built_in_policies():
    mapper = DefaultHandlerFactoryMapper()
    assert type(mapper.map(CallableHandlerPolicy())) is CallableHandlerFactory
    assert type(mapper.map(MethodHandlerPolicy("handle"))) is MethodHandlerFactory
    with pytest.raises(TypeError):
        mapper.map(TagPolicy("x"))


def test_default_mapper_extra_mapping_adds_and_overrides():
    mapper = DefaultHandlerFactoryMapper(extra_mapping={TagPolicy: TagFactory, CallableHandlerPolicy: TagFactory})
    assert type(mapper.map(TagPolicy("x"))) is TagFactory
    assert type(mapper.map(CallableHandlerPolicy())) is TagFactory
    assert type(mapper.map(MethodHandlerPolicy("handle"))) is MethodHandlerFactory


def test_custom_policy_through_a_bus_with_per_call_policies():
    """A custom policy type works end to end, with modifiers, and falls through when incompatible."""
    log = []
    cascade = HandlerFactoryCascade(
        [TagPolicy("default"), CallableHandlerPolicy()], mapper=DefaultHandlerFactoryMapper({TagPolicy: TagFactory})
    )
    bus = LocalRequestBus(cascade=cascade, modifiers=[Recorder("bus", log)])
    tagged = TaggedHandler()
    assert bus.register(tagged, modifiers=[Recorder("own", log)]) is tagged
    bus.register(on_bar)  # not tagged: the cascade goes on to the callable policy
    other = RequestHandlerRegistry(cascade=cascade)
    other.register(TaggedHandler(), policies=[TagPolicy("per call")])

    foo, bar = Foo(), Bar()
    assert asyncio.run(bus.execute(foo)) == ("default", foo)
    assert log == ["bus", "own", "own/out", "bus/out"]
    assert asyncio.run(bus.execute(bar)) == ("bar", bar)
    [entry] = list(other)
    assert entry.handler.tag == "per call"


# --- MappablePolicy.replace_map ---------------------------------------------------------------------

CALL_A = CallableHandlerPolicy(subject_arg="a")
CALL_B = CallableHandlerPolicy(subject_arg="b", arg_map={"x": "y"}, arg_strict=True)
METHOD = MethodHandlerPolicy("handle", policy=CALL_A, subtype_of=[Foo])
OTHER_METHOD = MethodHandlerPolicy("other")
BASE = MappablePolicy()


@pytest.mark.parametrize(
    "policy, patch, expected",
    [
        (BASE, CALL_B, BASE),
        (BASE, METHOD, BASE),
        (CALL_A, CALL_B, CALL_B),
        (CALL_A, METHOD, CALL_A),
        (CALL_A, BASE, CALL_A),
        (METHOD, CALL_B, MethodHandlerPolicy("handle", policy=CALL_B, subtype_of=[Foo])),
        (METHOD, OTHER_METHOD, OTHER_METHOD),
        (METHOD, BASE, METHOD),
    ],
    ids=[
        "base keeps itself",
        "base ignores a method policy",
        "callable by callable",
        "callable ignores a method policy",
        "callable ignores a base policy",
        "method takes the inner callable policy",
        "method by method",
        "method ignores a base policy",
    ],
)
def test_replace_map(policy, patch, expected):
    assert policy.replace_map(patch) == expected


def test_replace_map_takes_any_callable_policy_subclass():
    class Special(CallableHandlerPolicy):
        pass

    special = Special(subject_arg="s")
    assert CALL_A.replace_map(special) is special
    replaced = METHOD.replace_map(special)
    assert replaced.policy is special and replaced.name == "handle" and replaced.subtype_of == [Foo]


def test_replace_map_does_not_change_the_original():
    METHOD.replace_map(CALL_B)
    assert METHOD == MethodHandlerPolicy("handle", policy=CALL_A, subtype_of=[Foo])


# --- HandlerEntry ------------------------------------------------------------------------------


def test_entry_key_and_defaults():
    handler = handler_of(on_foo)
    entry = HandlerEntry(handler)
    assert entry.key is Foo and entry.handler is handler
    assert list(entry.modifiers) == []
    assert HandlerEntry(handler) == HandlerEntry(handler=handler, modifiers=())


def test_entry_handler_pipeline_without_modifiers_calls_the_handler():
    entry = HandlerEntry(handler_of(on_foo))
    subject = Foo()
    assert run_action(entry.handler_pipeline(), subject) == ActionResult(("foo", subject))


def test_entry_handler_pipeline_wraps_the_handler_first_modifier_outermost():
    log = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    entry = HandlerEntry(handler_of(on_foo), modifiers=[outer, inner])
    subject = Foo()
    assert run_action(entry.handler_pipeline(), subject).result == ("foo", subject)
    assert log == ["outer", "inner", "inner/out", "outer/out"]
    assert outer.targets == [entry.handler] and inner.targets == [entry.handler]


def test_entry_pipeline_wraps_any_call():
    log = []
    modifier = Recorder("m", log)

    async def call(action):
        log.append("call")
        return ActionResult(action.subject * 2)

    entry = HandlerEntry(handler_of(on_foo), modifiers=[modifier])
    assert run_action(entry.pipeline(call), 21) == ActionResult(42)
    assert log == ["m", "call", "m/out"]
    assert modifier.targets == [call]


def test_entry_stack_puts_modifiers_in_front_and_returns_a_new_entry():
    log = []
    a, b, c = Recorder("a", log), Recorder("b", log), Recorder("c", log)
    entry = HandlerEntry(handler_of(on_foo), modifiers=[c])
    stacked = entry.stack([a, b])
    assert stacked is not entry and stacked.handler is entry.handler and stacked.key is Foo
    assert list(stacked.modifiers) == [a, b, c]
    assert list(entry.modifiers) == [c]
    run_action(stacked.handler_pipeline(), Foo())
    assert log == ["a", "b", "c", "c/out", "b/out", "a/out"]


# --- stores ------------------------------------------------------------------------------------


def entries(*fns):
    return [HandlerEntry(handler_of(fn)) for fn in fns]


def test_collection_store_keeps_every_entry_in_order():
    store = CollectionHandlerStore()
    first, second, third = entries(on_foo, also_on_foo, on_bar)
    store.add(first)
    store.include([second, third])
    assert list(store) == [first, second, third]
    assert list(store) == [first, second, third], "iterating twice gives the same entries"


def test_mapping_store_keeps_one_entry_per_key():
    store = MappingHandlerStore()
    foo_entry, bar_entry = entries(on_foo, on_bar)
    store.add(foo_entry)
    store.include([bar_entry])
    assert store.get(Foo) is foo_entry and store.get(Bar) is bar_entry
    assert list(store) == [foo_entry, bar_entry]


def test_mapping_store_collision():
    store = MappingHandlerStore()
    first, second = entries(on_foo, also_on_foo)
    store.add(first)
    with pytest.raises(CollisionHandlerStoreError) as info:
        store.add(second)
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, HandlerStoreError)
    assert "Foo" in str(error) and "also_on_foo" in str(error)
    assert not str(error).startswith(("'", '"')), "the message is readable, not a quoted KeyError repr"
    assert store.get(Foo) is first and list(store) == [first]


def test_mapping_store_collision_within_include():
    store = MappingHandlerStore()
    with pytest.raises(CollisionHandlerStoreError):
        store.include(entries(on_foo, also_on_foo))
    assert store.get(Foo).handler.obj is on_foo


def test_mapping_store_lookup_error():
    store = MappingHandlerStore()
    store.include(entries(on_foo))
    with pytest.raises(LookupHandlerStoreError) as info:
        store.get(Bar)
    assert isinstance(info.value, LookupError) and isinstance(info.value, HandlerStoreError)
    assert "Bar" in str(info.value)


def test_modifier_store_stacks_its_modifiers_on_each_entry():
    log = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    own = Recorder("own", log)
    nested = CollectionHandlerStore()
    store = ModifierHandlerStore(nested, [outer, inner])
    entry = HandlerEntry(handler_of(on_foo), modifiers=[own])
    store.add(entry)
    store.include(entries(on_bar))
    stored = list(store)
    assert stored == list(nested)
    assert [list(e.modifiers) for e in stored] == [[outer, inner, own], [outer, inner]]
    assert list(entry.modifiers) == [own], "the added entry itself is not changed"


def test_nested_modifier_stores_the_one_nearest_the_storage_is_outermost():
    """Each layer wraps what it is given, as a bus wraps what a registry gives it."""
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    nested = MappingHandlerStore()
    store = ModifierHandlerStore(ModifierHandlerStore(nested, [b]), [a])
    store.add(HandlerEntry(handler_of(on_foo)))
    assert list(nested.get(Foo).modifiers) == [b, a]
    run_action(nested.get(Foo).handler_pipeline(), Foo())
    assert log == ["b", "a", "a/out", "b/out"]


def test_modifier_store_wrap():
    nested = CollectionHandlerStore()
    assert ModifierHandlerStore.wrap(nested, []) is nested
    assert ModifierHandlerStore.wrap(nested, ()) is nested
    modifier = Recorder("m", [])
    wrapped = ModifierHandlerStore.wrap(nested, [modifier])
    assert isinstance(wrapped, ModifierHandlerStore)
    wrapped.add(HandlerEntry(handler_of(on_foo)))
    assert [list(e.modifiers) for e in nested] == [[modifier]]


# --- HandlerRegistry ------------------------------------------------------------------------------


def test_registry_needs_policies_or_cascade():
    with pytest.raises(TypeError) as info:
        HandlerRegistry(CollectionHandlerStore())
    assert "policies" in str(info.value) and "cascade" in str(info.value)


def test_registry_with_empty_policies_is_a_config_error():
    with pytest.raises(ConfigHandlerFactoryCascadeError):
        HandlerRegistry(CollectionHandlerStore(), policies=[])


def test_registry_cascade_wins_over_policies():
    registry = HandlerRegistry(
        CollectionHandlerStore(),
        policies=[MethodHandlerPolicy("handle")],
        cascade=HandlerFactoryCascade([CallableHandlerPolicy()]),
    )
    registry.register(on_foo)
    assert [entry.key for entry in registry] == [Foo]


def test_register_direct_form_returns_the_object():
    store = CollectionHandlerStore()
    registry = HandlerRegistry(store, policies=[CallableHandlerPolicy()])
    assert registry.register(on_foo) is on_foo
    [entry] = list(registry)
    assert entry.key is Foo and entry.handler.obj is on_foo
    assert list(store) == [entry]


def test_register_decorator_forms_return_the_function():
    log = []
    modifier = Recorder("m", log)
    registry = HandlerRegistry(CollectionHandlerStore(), policies=[CallableHandlerPolicy()])

    @registry.register
    async def first(x: Foo):
        pass

    @registry.register()
    async def second(x: Bar):
        pass

    @registry.register(modifiers=[modifier], policies=[CallableHandlerPolicy(subject_arg="y")])
    async def third(z: int = 0, y: Foo = None):
        return (z, y)

    assert [fn.__name__ for fn in (first, second, third)] == ["first", "second", "third"]
    registered = list(registry)
    # each name is bound to the very object that was inspected: the decorators returned it unchanged
    assert [entry.handler.obj for entry in registered] == [first, second, third]
    assert [entry.key for entry in registered] == [Foo, Bar, Foo]
    assert list(registered[2].modifiers) == [modifier]
    subject = Foo()
    assert run_action(registered[2].handler_pipeline(), subject).result == (0, subject)
    assert log == ["m", "m/out"]


def test_register_policies_apply_to_that_call_only():
    class Service:
        async def handle(self, x: Bar):
            return "handled"

    registry = HandlerRegistry(CollectionHandlerStore(), policies=[CallableHandlerPolicy()])
    service = Service()
    assert registry.register(service, policies=[MethodHandlerPolicy("handle")]) is service
    registry.register(on_foo)
    with pytest.raises(IncompatibleHandlerFactoryCascadeError):
        registry.register(Service())  # the default cascade again: no __call__
    assert [(entry.key, entry.handler.obj) for entry in registry] == [(Bar, service), (Foo, on_foo)]


def test_register_failure_adds_nothing():
    async def untyped(x):
        pass

    registry = HandlerRegistry(MappingHandlerStore(), policies=[CallableHandlerPolicy()])
    with pytest.raises(HandlerFactoryCascadeError):
        registry.register(untyped)
    registry.register(on_foo)
    with pytest.raises(CollisionHandlerStoreError):
        registry.register(also_on_foo)
    assert [entry.handler.obj for entry in registry] == [on_foo]


def test_registry_modifiers_go_outside_register_modifiers_and_on_added_entries():
    log = []
    reg, own, added = Recorder("reg", log), Recorder("own", log), Recorder("added", log)
    registry = HandlerRegistry(CollectionHandlerStore(), policies=[CallableHandlerPolicy()], modifiers=[reg])
    registry.register(on_foo, modifiers=[own])
    registry.add(HandlerEntry(handler_of(on_bar), modifiers=[added]))
    registry.include(entries(also_on_foo))
    assert [list(entry.modifiers) for entry in registry] == [[reg, own], [reg, added], [reg]]
    run_action(list(registry)[0].handler_pipeline(), Foo())
    assert log == ["reg", "own", "own/out", "reg/out"]


class LayerFactory(ModifierFactory):
    def create(self, call, **kwargs):
        return call


BAD_MODIFIERS = {
    "a single modifier, not a sequence": (LayerFactory(), "LayerFactory"),
    "None": (None, "None"),
    "an object without create()": ([object()], "object"),
    "a modifier class, not an instance": ([LayerFactory], "LayerFactory"),
}

REGISTRY_MAKERS = {
    "HandlerRegistry": lambda mods: HandlerRegistry(MappingHandlerStore(), [CallableHandlerPolicy()], modifiers=mods),
    "RequestHandlerRegistry": lambda mods: RequestHandlerRegistry(modifiers=mods),
    "EventHandlerRegistry": lambda mods: EventHandlerRegistry(modifiers=mods),
    "LocalRequestBus": lambda mods: LocalRequestBus(modifiers=mods),
    "LocalEventBus": lambda mods: LocalEventBus(modifiers=mods),
}


@pytest.mark.parametrize("bad, name", BAD_MODIFIERS.values(), ids=list(BAD_MODIFIERS))
@pytest.mark.parametrize("maker", REGISTRY_MAKERS.values(), ids=list(REGISTRY_MAKERS))
def test_invalid_registry_modifiers_are_rejected_at_construction(maker, bad, name):
    with pytest.raises(TypeError) as info:
        maker(bad)
    assert name in str(info.value) and "ModifierFactory" in str(info.value)


@pytest.mark.parametrize("bad, name", BAD_MODIFIERS.values(), ids=list(BAD_MODIFIERS))
@pytest.mark.parametrize("form", ["direct", "decorator"])
@pytest.mark.parametrize("maker", [LocalRequestBus, EventHandlerRegistry])
def test_invalid_register_modifiers_are_rejected_and_nothing_is_registered(maker, form, bad, name):
    registry = maker()
    with pytest.raises(TypeError) as info:
        if form == "direct":
            registry.register(on_foo, modifiers=bad)
        else:
            registry.register(modifiers=bad)(on_foo)
    assert name in str(info.value) and "ModifierFactory" in str(info.value)
    assert list(registry) == []


# --- request/event registries included into buses --------------------------------------------------


def layered_request_bus(kinds, log, registry_policies=None):
    """A bus including a registry; the handler logs itself. ``kinds``: layer kind per level."""
    bus_kind, reg_kind, own_kind = (LAYER_KINDS[kind] for kind in kinds)
    registry = RequestHandlerRegistry(policies=registry_policies, modifiers=[reg_kind("registry", log)])

    @registry.register(modifiers=[own_kind("register", log)])
    async def handle(x: Foo):
        log.append("handler")
        return ("handled", x)

    bus = LocalRequestBus(modifiers=[bus_kind("bus", log)])
    bus.include(registry)
    return bus, registry


KIND_COMBOS = [(a, b, c) for a in LAYER_KINDS for b in LAYER_KINDS for c in LAYER_KINDS]
EXPECTED_ORDER = ["bus", "registry", "register", "handler", "register/out", "registry/out", "bus/out"]


@pytest.mark.parametrize("kinds", KIND_COMBOS, ids=["-".join(kinds) for kinds in KIND_COMBOS])
def test_request_registry_included_into_bus_modifier_order(kinds):
    """Order: bus > registry > register(modifiers=) > handler, whatever kind each layer is."""
    log = []
    bus, _ = layered_request_bus(kinds, log)
    subject = Foo()
    assert asyncio.run(bus.execute(subject)) == ("handled", subject)
    assert log == EXPECTED_ORDER


def test_include_leaves_the_registry_entries_unchanged():
    log = []
    bus, registry = layered_request_bus(("factory", "factory", "factory"), log)
    [registry_entry] = list(registry)
    [bus_entry] = list(bus)
    assert [m.name for m in registry_entry.modifiers] == ["registry", "register"]
    assert [m.name for m in bus_entry.modifiers] == ["bus", "registry", "register"]
    assert bus_entry.handler is registry_entry.handler


def test_one_registry_included_into_two_buses():
    log = []
    registry = RequestHandlerRegistry(modifiers=[Recorder("registry", log)])
    registry.register(on_foo)
    first = LocalRequestBus(modifiers=[Recorder("first", log)])
    second = LocalRequestBus(modifiers=[Recorder("second", log)])
    first.include(registry)
    second.include(registry)
    subject = Foo()
    assert asyncio.run(first.execute(subject)) == ("foo", subject)
    assert asyncio.run(second.execute(subject)) == ("foo", subject)
    assert log == [
        "first", "registry", "registry/out", "first/out",
        "second", "registry", "registry/out", "second/out",
    ]  # fmt: skip


def test_request_registry_keeps_one_handler_per_class():
    registry = RequestHandlerRegistry()
    registry.register(on_foo)
    with pytest.raises(CollisionHandlerStoreError) as info:
        registry.register(also_on_foo)
    assert "Foo" in str(info.value)


def test_request_registry_include_colliding_with_bus_handler():
    registry = RequestHandlerRegistry()
    registry.register(also_on_foo)
    bus = LocalRequestBus()
    bus.register(on_foo)
    with pytest.raises(CollisionHandlerStoreError) as info:
        bus.include(registry)
    assert "Foo" in str(info.value)
    subject = Foo()
    assert asyncio.run(bus.execute(subject)) == ("foo", subject), "the bus keeps its first handler"


def test_request_registry_policies_and_cascade():
    class Service:
        async def execute(self, x: Bar):
            return ("service", x)

    by_policies = RequestHandlerRegistry(policies=[MethodHandlerPolicy("execute")])
    by_cascade = RequestHandlerRegistry(cascade=HandlerFactoryCascade([MethodHandlerPolicy("execute")]))
    bus = LocalRequestBus()
    service = Service()
    by_policies.register(service)
    by_cascade.register(Service())
    bus.include(by_policies)
    subject = Bar()
    assert asyncio.run(bus.execute(subject)) == ("service", subject)
    assert [entry.key for entry in by_cascade] == [Bar]


def test_registry_handler_missing_after_include_is_still_a_lookup_error():
    bus = LocalRequestBus()
    bus.include(RequestHandlerRegistry())
    with pytest.raises(LookupHandlerStoreError) as info:
        asyncio.run(bus.execute(Bar()))
    assert "Bar" in str(info.value)


@pytest.mark.parametrize("kinds", KIND_COMBOS, ids=["-".join(kinds) for kinds in KIND_COMBOS])
def test_event_registry_included_into_bus(kinds):
    """Every handler runs in registration order, each inside bus > registry > register(modifiers=)."""
    bus_kind, reg_kind, own_kind = (LAYER_KINDS[kind] for kind in kinds)
    log = []
    registry = EventHandlerRegistry(modifiers=[reg_kind("registry", log)])

    @registry.register(modifiers=[own_kind("register", log)])
    async def first(x: Foo):
        log.append("first")

    @registry.register
    async def second(x: Foo):
        log.append("second")

    bus = LocalEventBus(modifiers=[bus_kind("bus", log)], sync_mode=True)

    @bus.register
    async def on_bus(x: Foo):
        log.append("on bus")

    bus.include(registry)
    assert asyncio.run(bus.publish(Foo())) is None
    assert log == [
        "bus", "on bus", "bus/out",
        "bus", "registry", "register", "first", "register/out", "registry/out", "bus/out",
        "bus", "registry", "second", "registry/out", "bus/out",
    ]  # fmt: skip


def test_event_registry_keeps_every_handler():
    registry = EventHandlerRegistry()
    registry.register(on_foo)
    registry.register(also_on_foo)
    registry.register(on_foo)
    assert [entry.handler.obj for entry in registry] == [on_foo, also_on_foo, on_foo]


def test_event_registry_include_in_background_mode():
    """Without sync_mode the handler runs as a task, still inside bus > registry."""
    log = []
    finished = {}

    class SignalDone(ModifierFactory):
        def create(self, call, **kwargs):
            async def layer(action):
                result = await call(action)
                finished["event"].set()
                return result

            return layer

    registry = EventHandlerRegistry(modifiers=[Recorder("registry", log)])

    @registry.register
    async def handle(x: Foo):
        log.append("handler")

    bus = LocalEventBus(modifiers=[SignalDone(), Recorder("bus", log)])
    bus.include(registry)

    async def main():
        finished["event"] = asyncio.Event()
        await bus.publish(Foo())
        await finished["event"].wait()

    asyncio.run(main())
    assert log == ["bus", "registry", "handler", "registry/out", "bus/out"]
