"""``Stream``: what ``LocalRequestBus.stream`` returns."""

from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar

__all__ = ["Stream"]

T = TypeVar("T")


class Stream(AsyncIterator[T]):
    """The items a streaming handler yields, as an async iterator.

    The handler (with its injection, modifiers and hooks) starts at the first
    ``__anext__``; its errors reach the consumer. Leaving an ``async for`` early lets the
    handler's generator be closed when the stream is dropped; ``async with`` (or
    ``await stream.aclose()``) closes it at once.
    """

    __slots__ = ("_open", "_iterator")

    def __init__(self, open_: Callable[[], Awaitable[Any]]) -> None:
        self._open: Optional[Callable[[], Awaitable[Any]]] = open_
        self._iterator: Any = None

    def __aiter__(self) -> "Stream[T]":
        return self

    async def __anext__(self) -> T:
        if self._iterator is None:
            open_, self._open = self._open, None
            if open_ is None:  # closed before it started
                raise StopAsyncIteration
            self._iterator = await open_()
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Close the handler's generator now (its ``finally`` blocks run)."""
        self._open = None
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> "Stream[T]":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
