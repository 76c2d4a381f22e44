"""An advanced command/query example: a small to-do service.

It shows:

- handler classes with dependencies, registered through ``MethodHandlerPolicy(name="handle")``;
- a plain function registered with ``CallableHandlerPolicy(arg_map=...)``;
- extra argument injection: ``bus.execute(request, user=...)`` reaches the handlers that ask for it;
- a ``RequestHandlerRegistry`` built apart from the bus, then ``bus.include(registry)``;
- a ``ModifierFactory`` modifier that maps a domain exception to a result;
- ``mediator.Hook``: an authorization check (``before``) and metrics (``after`` / ``error``).

Run it: ``pytest example/test_request_advanced.py``.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Optional

import pytest

import mediator
from mediator.common.factory import CallableHandlerPolicy, MethodHandlerPolicy
from mediator.common.modifiers import ModifierFactory
from mediator.common.types import ActionResult, ActionSubject
from mediator.request import LocalRequestBus, RequestHandlerRegistry

# -- the domain ---------------------------------------------------------------


@dataclass
class User:
    name: str


@dataclass
class Todo:
    id: int
    title: str
    owner: str


class TodoNotFound(Exception):
    """A domain error: no to-do with this id."""


class TodoRepository:
    """An in-memory store, standing in for a database."""

    def __init__(self) -> None:
        self.todos: Dict[int, Todo] = {}

    def add(self, title: str, owner: str) -> Todo:
        todo = Todo(id=len(self.todos) + 1, title=title, owner=owner)
        self.todos[todo.id] = todo
        return todo

    def get(self, todo_id: int) -> Todo:
        if todo_id not in self.todos:
            raise TodoNotFound(f"to-do #{todo_id} does not exist")
        return self.todos[todo_id]


# -- requests -----------------------------------------------------------------


@dataclass
class CreateTodo:
    title: str


@dataclass
class GetTodo:
    todo_id: int


@dataclass
class DeleteTodo:
    todo_id: int


@dataclass
class NotFound:
    """The result a caller gets instead of a ``TodoNotFound`` exception."""

    reason: str


# -- handlers -----------------------------------------------------------------


class CreateTodoHandler:
    """A handler class: the bus calls its ``handle`` method (see the registry policy)."""

    def __init__(self, repository: TodoRepository) -> None:
        self.repository = repository

    # `user` is injected: bus.execute(CreateTodo(...), user=...)
    async def handle(self, command: CreateTodo, user: User) -> Todo:
        return self.repository.add(command.title, owner=user.name)


class GetTodoHandler:
    def __init__(self, repository: TodoRepository) -> None:
        self.repository = repository

    # No `user` parameter: the injected `user` is simply not passed here.
    async def handle(self, query: GetTodo) -> Todo:
        return self.repository.get(query.todo_id)


def build_registry(repository: TodoRepository) -> RequestHandlerRegistry:
    """The to-do handlers, collected in a registry that any bus can include."""
    registry = RequestHandlerRegistry(policies=[MethodHandlerPolicy(name="handle")])
    registry.register(CreateTodoHandler(repository))
    registry.register(GetTodoHandler(repository))

    # A plain function; `arg_map` renames the injected `user` to its `current_user` parameter.
    # (Per-register `policies=` replace the registry's policies for this one object.)
    @registry.register(policies=[CallableHandlerPolicy(arg_map={"user": "current_user"})])
    async def delete_todo(command: DeleteTodo, current_user: User) -> bool:
        todo = repository.get(command.todo_id)
        if todo.owner != current_user.name:
            raise PermissionError(f"{current_user.name} does not own to-do #{todo.id}")
        del repository.todos[todo.id]
        return True

    return registry


# -- modifiers ----------------------------------------------------------------


class NotFoundAsResult(ModifierFactory):
    """Wraps each handler: a ``TodoNotFound`` becomes a ``NotFound`` result."""

    def create(self, call, **kwargs):
        async def modifier(action: ActionSubject) -> ActionResult:
            try:
                return await call(action)
            except TodoNotFound as error:
                return ActionResult(NotFound(reason=str(error)))

        return modifier


class RequireUser(mediator.Hook):
    """Refuses any request executed without a ``user``."""

    def before(self, subject, inject):
        if not isinstance(inject.get("user"), User):
            raise PermissionError(f"{type(subject).__name__} needs an authenticated user")


class Metrics(mediator.Hook):
    """Counts handled and failed requests per request class."""

    def __init__(self) -> None:
        self.handled: Counter = Counter()
        self.failed: Counter = Counter()

    def after(self, subject, result):
        self.handled[type(subject).__name__] += 1
        return result  # an `after` returns the result (it could replace it)

    def error(self, subject, error):
        self.failed[type(subject).__name__] += 1  # the error is re-raised afterwards


@dataclass
class App:
    bus: LocalRequestBus
    repository: TodoRepository
    metrics: Metrics


def build_app() -> App:
    repository = TodoRepository()
    metrics = Metrics()
    # Bus modifiers wrap every handler, the first one outermost:
    # the auth check runs first, metrics see the errors NotFoundAsResult does not catch.
    bus = LocalRequestBus(modifiers=[RequireUser(), NotFoundAsResult(), metrics])
    bus.include(build_registry(repository))
    return App(bus, repository, metrics)


ALICE = User("alice")
BOB = User("bob")


def run(app: App, request, user: Optional[User] = ALICE):
    """Execute one request as `user` (None: anonymous)."""
    if user is None:
        return asyncio.run(app.bus.execute(request))
    return asyncio.run(app.bus.execute(request, user=user))


# -- the behaviour ------------------------------------------------------------


def test_create_and_get():
    """The injected user reaches the handler that asks for it."""
    app = build_app()
    created = run(app, CreateTodo(title="write docs"))
    assert created == Todo(id=1, title="write docs", owner="alice")
    assert run(app, GetTodo(todo_id=1), user=BOB) == created
    assert app.metrics.handled == {"CreateTodo": 1, "GetTodo": 1}


def test_domain_error_becomes_result():
    """The ModifierFactory turns TodoNotFound into a NotFound result."""
    app = build_app()
    assert run(app, GetTodo(todo_id=42)) == NotFound(reason="to-do #42 does not exist")
    assert run(app, DeleteTodo(todo_id=42)) == NotFound(reason="to-do #42 does not exist")


def test_arg_map_renames_injected_user():
    """delete_todo gets the injected `user` as its `current_user` parameter."""
    app = build_app()
    run(app, CreateTodo(title="write docs"), user=ALICE)

    with pytest.raises(PermissionError, match="bob does not own to-do #1"):
        run(app, DeleteTodo(todo_id=1), user=BOB)
    assert app.metrics.failed == {"DeleteTodo": 1}

    assert run(app, DeleteTodo(todo_id=1), user=ALICE) is True
    assert app.repository.todos == {}


def test_hook_refuses_anonymous_requests():
    """RequireUser.before raises before any handler (or later modifier) runs."""
    app = build_app()
    with pytest.raises(PermissionError, match="CreateTodo needs an authenticated user"):
        run(app, CreateTodo(title="sneaky"), user=None)
    assert app.repository.todos == {}
    assert app.metrics.handled == {} and app.metrics.failed == {}
