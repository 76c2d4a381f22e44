"""The README's command/query example, as a runnable test.

Run it: ``pytest example/test_request_simple.py``.
"""

import asyncio
from dataclasses import dataclass

import pytest

from mediator.common.registry import LookupHandlerStoreError
from mediator.request import LocalRequestBus

bus = LocalRequestBus()


@dataclass
class PrintMessageCommand:
    message: str


# The handler is matched by the annotation of its first parameter.
@bus.register
async def command_handler(event: PrintMessageCommand):
    print(f"print message: {event.message}")
    return event.message


@dataclass
class DataQuery:
    id: int


@bus.register
async def query_handler(query: DataQuery):
    print(f"data query: {query.id}")
    return {"id": query.id, "data": "test"}


async def main():
    printed_message = await bus.execute(PrintMessageCommand(message="test"))
    assert printed_message == "test"

    data = await bus.execute(DataQuery(id=1))
    assert data == {"id": 1, "data": "test"}


def test_command_and_query(capsys):
    asyncio.run(main())
    # -- output --
    assert capsys.readouterr().out == "print message: test\ndata query: 1\n"


@dataclass
class UnknownQuery:
    id: int


def test_request_without_handler():
    """A request class nobody registered a handler for is a LookupHandlerStoreError."""
    with pytest.raises(LookupHandlerStoreError, match="UnknownQuery"):
        asyncio.run(bus.execute(UnknownQuery(id=7)))
