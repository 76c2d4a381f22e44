"""A small FastAPI service on this bus: bank accounts, event-sourced on SQLite.

    uvicorn example.fastapi_app:app        # MEDIATOR_BANK_DB=bank.db by default

What it shows, the way a FastAPI user expects it:

- **Lifespan**: the event store, the request bus and the event bus are opened in the
  app's ``lifespan`` and closed there. The event bus is closed first: ``aclose`` drains
  it, so an event whose background handlers are still running when the server stops is
  finished, not lost; then the store closes.
- **Commands and queries** go through ``LocalRequestBus.execute``; **events** are
  recorded by an ``Aggregate``, saved by a ``Repository`` (one transaction, version
  checked) and published on the ``LocalEventBus`` after the commit (the store is the
  outbox: an event committed but not published is published by the next process).
- **Request-scoped values** (the current user, a request id) reach the handlers through
  injection: the ``handler_args`` dependency builds the keyword arguments, and
  ``execute(command, **args)`` hands each handler the ones it asks for.
- **Errors become HTTP responses** in exception handlers: an unknown account 404, a
  version conflict (``ConcurrencyError``) 409, a domain rule broken (``ValueError``)
  422, a request the bus has no handler for (``LookupHandlerStoreError``: a bug) 500.
"""

import asyncio
import os
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mediator.common.registry import LookupHandlerStoreError
from mediator.event import LocalEventBus
from mediator.eventsourcing import (
    Aggregate,
    AggregateNotFoundError,
    ConcurrencyError,
    Repository,
    applies,
    open_store,
)
from mediator.request import LocalRequestBus, RequestHandlerRegistry

# -- the domain: events and the aggregate ------------------------------------------------


@dataclass(frozen=True)
class AccountOpened:
    owner: str


@dataclass(frozen=True)
class MoneyDeposited:
    amount: int


class Account(Aggregate):
    owner: str
    balance: int

    @classmethod
    def open(cls, owner: str) -> "Account":
        account = cls()
        account.record(AccountOpened(owner))
        return account

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError(f"a deposit must be positive, got {amount}")
        self.record(MoneyDeposited(amount))

    @applies
    def _opened(self, event: AccountOpened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies
    def _deposited(self, event: MoneyDeposited) -> None:
        self.balance += event.amount


# -- commands, queries and their handlers --------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is asking, and the id of the HTTP request (request-scoped, injected)."""

    user: str
    request_id: str


@dataclass
class OpenAccount:
    owner: str


@dataclass
class Deposit:
    account_id: str
    amount: int
    expected_version: Optional[int] = None  # from If-Match: refuse if the account moved on


@dataclass
class GetAccount:
    account_id: str


@dataclass
class CloseAccount:  # no handler: the bus raises LookupHandlerStoreError (a 500)
    account_id: str


commands = RequestHandlerRegistry()


@commands.register
async def open_account(command: OpenAccount, accounts: Repository, caller: Caller) -> Dict[str, Any]:
    account = Account.open(command.owner)
    await accounts.save(account, metadata={"user": caller.user, "request_id": caller.request_id})
    return {"id": account.id, "version": account.version}


@commands.register
async def deposit(command: Deposit, accounts: Repository, caller: Caller) -> Dict[str, Any]:
    account = await accounts.get(Account, command.account_id)
    if command.expected_version is not None and account.version != command.expected_version:
        raise ConcurrencyError(account.id, command.expected_version, account.version)
    account.deposit(command.amount)
    await accounts.save(account, metadata={"user": caller.user, "request_id": caller.request_id})
    return {"id": account.id, "version": account.version, "balance": account.balance}


@commands.register
async def get_account(query: GetAccount, accounts: Repository) -> Dict[str, Any]:
    account = await accounts.get(Account, query.account_id)
    return {"id": account.id, "owner": account.owner, "balance": account.balance, "version": account.version}


# -- events: published after each commit, handled in the background -------------------------


class Reactions:
    """The event handlers, as methods of an object the lifespan builds with what they need
    (here a list standing for a mailer; a ledger, a webhook client... in a real app)."""

    def __init__(self) -> None:
        self.receipts: List[str] = []
        self.mail_server_up: Optional[asyncio.Event] = None  # set: receipts wait for it

    async def send_receipt(self, event: MoneyDeposited) -> None:
        if self.mail_server_up is not None:  # a slow side effect: an e-mail, a webhook
            await self.mail_server_up.wait()
        self.receipts.append(f"deposited {event.amount}")

    async def welcome(self, event: AccountOpened) -> None:
        self.receipts.append(f"welcome {event.owner}")


# -- wiring: the lifespan, the injected values, the errors -----------------------------------


@dataclass
class Services:
    requests: LocalRequestBus
    events: LocalEventBus
    accounts: Repository
    reactions: Reactions


def create_app(database: str = "bank.db") -> FastAPI:
    """The service, its state in the SQLite file ``database``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reactions = Reactions()
        events = LocalEventBus()  # background strategy: a request does not wait for its reactions
        events.register(reactions.send_receipt)
        events.register(reactions.welcome)
        requests = LocalRequestBus()
        requests.include(commands)
        # `async with` exits in reverse order: the event bus is drained (aclose) before the store closes.
        async with open_store(f"sqlite:///{database}") as store, events:
            accounts = Repository(store, bus=events)  # publishes each saved event after its commit
            app.state.services = Services(requests, events, accounts, reactions)
            yield

    app = FastAPI(title="bank", lifespan=lifespan)

    def services(request: Request) -> Services:
        return request.app.state.services

    async def handler_args(
        request: Request,
        x_user: str = Header(..., description="the authenticated user (set by the gateway)"),
        x_request_id: Optional[str] = Header(None),
    ) -> Dict[str, Any]:
        """The keyword arguments every handler may ask for, made once per HTTP request."""
        caller = Caller(user=x_user, request_id=x_request_id or uuid.uuid4().hex)
        return {"caller": caller, "accounts": request.app.state.services.accounts}

    class OpenBody(BaseModel):
        owner: str

    class DepositBody(BaseModel):
        amount: int

    @app.post("/accounts", status_code=201)
    async def post_account(body: OpenBody, bus: Services = Depends(services), args: dict = Depends(handler_args)):
        return await bus.requests.execute(OpenAccount(body.owner), **args)

    @app.post("/accounts/{account_id}/deposits")
    async def post_deposit(
        account_id: str,
        body: DepositBody,
        if_match: Optional[int] = Header(None),
        bus: Services = Depends(services),
        args: dict = Depends(handler_args),
    ):
        return await bus.requests.execute(Deposit(account_id, body.amount, if_match), **args)

    @app.get("/accounts/{account_id}")
    async def read_account(account_id: str, bus: Services = Depends(services), args: dict = Depends(handler_args)):
        return await bus.requests.execute(GetAccount(account_id), **args)

    @app.delete("/accounts/{account_id}")
    async def delete_account(account_id: str, bus: Services = Depends(services), args: dict = Depends(handler_args)):
        return await bus.requests.execute(CloseAccount(account_id), **args)

    @app.exception_handler(AggregateNotFoundError)
    async def not_found(request: Request, error: AggregateNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(ConcurrencyError)
    async def conflict(request: Request, error: ConcurrencyError) -> JSONResponse:
        return JSONResponse({"detail": str(error), "version": error.actual}, status_code=409)

    @app.exception_handler(ValueError)
    async def invalid(request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(LookupHandlerStoreError)
    async def no_handler(request: Request, error: LookupHandlerStoreError) -> JSONResponse:
        return JSONResponse({"detail": "internal error: this operation is not wired"}, status_code=500)

    return app


app = create_app(os.environ.get("MEDIATOR_BANK_DB", "bank.db"))
