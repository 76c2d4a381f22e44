"""A relay process for test_relay.py: ``python relay_proc.py STORE_URL TRANSPORT_URL NAME MARKER``.

It relays the store to the transport in batches of 100, but pauses for a minute between
publishing its first batch and writing the checkpoint, after writing MARKER: the test
kills it there with SIGKILL.
"""

import asyncio
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mediator.codec import event_type
from mediator.eventsourcing import open_store
from mediator.transport import Relay, connect


@event_type("relay.Note")
@dataclass(frozen=True)
class Note:
    n: int


async def main(store_url: str, transport_url: str, name: str, marker: str) -> None:
    async with open_store(store_url) as store, connect(transport_url) as transport:
        original = store.transaction

        @asynccontextmanager
        async def paused():  # type: ignore[no-untyped-def]
            async with original() as tx:
                set_checkpoint = tx.set_checkpoint

                async def pause_then_set(name: str, position: int) -> None:
                    with open(marker, "w") as file:
                        file.write(f"published up to {position}, checkpoint next\n")
                    await asyncio.sleep(60)
                    await set_checkpoint(name, position)

                tx.set_checkpoint = pause_then_set  # type: ignore[method-assign]
                yield tx

        store.transaction = paused  # type: ignore[method-assign]
        await Relay(store, transport, name=name, batch_size=100).catch_up()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
