"""The README's event example, as a runnable test.

``sync_mode=True`` makes ``publish`` return only once every handler has finished,
so the output below is deterministic. (By default handlers run as background tasks:
see test_event_advanced.py.)

Run it: ``pytest example/test_event_simple.py``.
"""

import asyncio
from dataclasses import dataclass

from mediator.event import LocalEventBus

bus = LocalEventBus(sync_mode=True)


@dataclass
class MessageEvent:
    message: str


# Any number of handlers per event class; they are called in registration order.
@bus.register
async def first_handler(event: MessageEvent):
    print(f"first handler: {event.message}")


@bus.register
async def second_handler(event: MessageEvent):
    print(f"second handler: {event.message}")


async def main():
    await bus.publish(MessageEvent(message="test"))


def test_event(capsys):
    asyncio.run(main())
    # -- output --
    assert capsys.readouterr().out == "first handler: test\nsecond handler: test\n"


@dataclass
class NobodyListens:
    pass


def test_event_without_handlers(capsys):
    """Publishing an event that has no handler does nothing (it is not an error)."""
    asyncio.run(bus.publish(NobodyListens()))
    assert capsys.readouterr().out == ""
