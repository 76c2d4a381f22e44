"""Events to bytes and back, by a stable type name.

A ``Codec`` keeps a table of known event classes, each under a type name (by default
``module.QualName``; ``@event_type("bank.Opened")`` fixes one that survives a rename or a
move) and a version. ``encode(event)`` gives ``(type string, JSON bytes)``;
``decode(type string, bytes)`` gives the event back, running the upcasters of older
stored versions first. Only registered classes decode: nothing is ever unpickled, and a
type string no class has is an ``UnknownTypeError`` naming it, never a silent skip.

Dataclasses, ``msgspec.Struct``s and pydantic (v2) models are supported. The payload is
JSON, written by ``msgspec`` when it is installed (``pip install mediator[codec]``) and by
the standard library otherwise (PyPy, where msgspec does not build), in the same format,
so either side reads what the other wrote.
"""

import dataclasses
import json
from typing import Any, Callable, Dict, Iterable, Tuple, Type, TypeVar

from mediator import _jsonconv

try:  # the fast path; optional (it does not build on PyPy)
    import msgspec
except ImportError:  # pragma: no cover - depends on the interpreter
    msgspec = None  # type: ignore[assignment]

__all__ = [
    "Codec",
    "codec",
    "event_type",
    "CodecError",
    "EncodeError",
    "DecodeError",
    "UnknownTypeError",
]

T = TypeVar("T")
Upcaster = Callable[[Dict[str, Any]], Dict[str, Any]]

_MARK = "__mediator_event_type__"


class CodecError(Exception):
    """Base of the codec's errors."""


class EncodeError(CodecError, TypeError):
    """An object the codec cannot encode (its class is named, and why)."""


class DecodeError(CodecError, ValueError):
    """Stored bytes that do not decode as the type they name."""

    def __init__(self, message: str, type_name: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name


class UnknownTypeError(DecodeError, LookupError):
    """A stored type string that no registered class has."""


def event_type(name: str, *, version: int = 1, aliases: Iterable[str] = ()) -> Callable[[Type[T]], Type[T]]:
    """Class decorator: store the class under ``name`` at ``version``.

    ``aliases`` are older names that still decode to this class (a rename). Raising
    ``version`` needs an upcaster for each older version still stored
    (``Codec.upcaster``). The mark is the class's own: subclasses do not inherit it.
    """
    if not isinstance(name, str) or not name or "@" in name:
        raise ValueError(f"event_type name must be a non-empty str without '@', got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"event_type version must be an int >= 1, got {version!r}")
    alias_names = tuple(aliases)
    for alias in alias_names:
        if not isinstance(alias, str) or not alias or "@" in alias:
            raise ValueError(f"event_type alias must be a non-empty str without '@', got {alias!r}")

    def mark(cls: Type[T]) -> Type[T]:
        setattr(cls, _MARK, (cls, name, version, alias_names))
        return cls

    return mark


def _describe(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _is_pydantic(cls: type) -> bool:
    return callable(getattr(cls, "model_validate", None)) and callable(getattr(cls, "model_dump", None))


def _is_struct(cls: type) -> bool:
    return msgspec is not None and isinstance(cls, type) and issubclass(cls, msgspec.Struct)


def split_type(type_string: str) -> Tuple[str, int]:
    """``"bank.Deposited@2"`` -> ``("bank.Deposited", 2)``; no suffix is version 1."""
    name, at, version = type_string.rpartition("@")
    if at and version.isdigit() and name:
        return name, int(version)
    return type_string, 1


class _Entry:
    __slots__ = ("cls", "name", "version", "type_string", "aliases", "decoder")

    def __init__(self, cls: type, name: str, version: int, aliases: Tuple[str, ...]) -> None:
        self.cls, self.name, self.version, self.aliases = cls, name, version, aliases
        self.type_string = name if version == 1 else f"{name}@{version}"
        self.decoder: Any = None


def _enc_hook(obj: Any) -> Any:
    if _is_pydantic(type(obj)):
        return obj.model_dump(mode="json")
    raise NotImplementedError(f"{type(obj).__qualname__} values are not JSON-encodable")


class Codec:
    """A table of event classes by stable type name, and their JSON form."""

    def __init__(self, classes: Iterable[type] = ()) -> None:
        self._entries: Dict[type, _Entry] = {}
        self._names: Dict[str, _Entry] = {}
        self._upcasters: Dict[Tuple[str, int], Upcaster] = {}
        self._decoders: Dict[str, Callable[[Any], Any]] = {}  # type string -> its decoder
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook) if msgspec is not None else None
        self.register_all(classes)

    # registration

    def supports(self, cls: Any) -> bool:
        """Whether ``cls`` is a class this codec can store (dataclass, Struct, pydantic model)."""
        return isinstance(cls, type) and (
            dataclasses.is_dataclass(cls) or _is_struct(cls) or _is_pydantic(cls)
        )

    def register(self, cls: Type[T]) -> Type[T]:
        """Know ``cls`` under its type name (idempotent); returns it, so it decorates too."""
        if cls in self._entries:
            return cls
        if not self.supports(cls):
            raise CodecError(
                f"cannot register {_describe(cls)}: an event class must be a dataclass, "
                "a msgspec.Struct or a pydantic model"
            )
        mark = cls.__dict__.get(_MARK)
        if mark is not None and mark[0] is cls:
            _, name, version, aliases = mark
        else:
            name, version, aliases = f"{cls.__module__}.{cls.__qualname__}", 1, ()
        entry = _Entry(cls, name, version, aliases)
        for key in (name, *aliases):
            other = self._names.get(key)
            if other is not None and other.cls is not cls and _describe(other.cls) != _describe(cls):
                raise CodecError(
                    f"cannot register {_describe(cls)} as {key!r}: {_describe(other.cls)} has that name"
                )
        for key in (name, *aliases):
            other = self._names.get(key)
            if other is not None:  # a redefinition of the same class (a reload): the new one wins
                self._entries.pop(other.cls, None)
            self._names[key] = entry
        self._entries[cls] = entry
        self._decoders.clear()
        return cls

    def register_all(self, classes: Iterable[type]) -> None:
        """``register`` each of ``classes``."""
        for cls in classes:
            self.register(cls)

    def upcaster(self, name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``fn(data: dict) -> dict`` turns version ``from_version`` of ``name``
        into version ``from_version + 1``."""
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be an int >= 1, got {from_version!r}")

        def add(fn: Upcaster) -> Upcaster:
            if not callable(fn):
                raise TypeError(f"an upcaster must be callable (dict) -> dict, got {fn!r}")
            key = (name, from_version)
            if key in self._upcasters and self._upcasters[key] is not fn:
                raise CodecError(f"an upcaster of {name!r} from version {from_version} is registered already")
            self._upcasters[key] = fn
            return fn

        return add

    def type_of(self, cls: type) -> str:
        """The type string ``cls`` is stored under (registering it if needed)."""
        entry = self._entries.get(cls)
        if entry is None:
            self.register(cls)
            entry = self._entries[cls]
        return entry.type_string

    def class_of(self, type_string: str) -> type:
        """The class a stored type string decodes to (``UnknownTypeError`` if none)."""
        return self._lookup(type_string)[0].cls

    def knows(self, type_string: str) -> bool:
        """Whether ``type_string`` names a registered class (a known name or alias)."""
        return split_type(type_string)[0] in self._names

    # encoding

    def encode(self, obj: Any) -> Tuple[str, bytes]:
        """``(type string, JSON bytes)`` of ``obj``; its class is registered if need be."""
        cls = type(obj)
        entry = self._entries.get(cls)
        if entry is None:
            try:
                self.register(cls)
            except CodecError as error:
                raise EncodeError(str(error)) from None
            entry = self._entries[cls]
        try:
            if self._encoder is not None:
                data = self._encoder.encode(obj)
            else:
                data = _jsonconv.dumps(obj)
        except (TypeError, ValueError, NotImplementedError, OverflowError) as error:
            raise EncodeError(f"cannot encode {_describe(cls)}: {error}") from error
        return entry.type_string, data

    # decoding

    def _lookup(self, type_string: str) -> Tuple[_Entry, int]:
        if not isinstance(type_string, str):
            raise UnknownTypeError(f"a stored type must be a str, got {type_string!r}", repr(type_string))
        name, version = split_type(type_string)
        entry = self._names.get(name)
        if entry is None:
            raise UnknownTypeError(
                f"unknown event type {type_string!r}: no registered class has that name "
                "(register it: codec.register(cls), @event_type(name, aliases=...), "
                "or let an Aggregate or a bus handler name it)",
                type_string,
            )
        return entry, version

    def decode(self, type_string: str, payload: bytes) -> Any:
        """The event stored as ``payload`` under ``type_string``."""
        fast = self._decoders.get(type_string)  # a current-version type seen before
        if fast is not None:
            try:
                return fast(payload)
            except Exception:  # the full path below raises the clear error
                pass
        entry, version = self._lookup(type_string)
        cls = entry.cls
        if version > entry.version:
            raise DecodeError(
                f"cannot decode {type_string!r}: stored at version {version}, but "
                f"{_describe(cls)} is at version {entry.version}",
                type_string,
            )
        if isinstance(payload, memoryview):
            payload = bytes(payload)
        try:
            if version == entry.version:
                event = self._decode_current(entry, payload)
                self._decoders[type_string] = self._current_decoder(entry)
                return event
            data = self._loads(payload)
            for step in range(version, entry.version):
                upcast = self._upcasters.get((entry.name, step))
                if upcast is None:
                    raise DecodeError(
                        f"cannot decode {type_string!r}: no upcaster of {entry.name!r} "
                        f"from version {step} (to {step + 1})",
                        type_string,
                    )
                data = upcast(data)
                if not isinstance(data, dict):
                    raise DecodeError(
                        f"the upcaster of {entry.name!r} from version {step} returned "
                        f"{type(data).__name__}, not a dict",
                        type_string,
                    )
            return self._convert(cls, data)
        except DecodeError:
            raise
        except Exception as error:  # every parser's and validator's own error type
            raise DecodeError(f"cannot decode {type_string!r} as {_describe(cls)}: {error}", type_string) from error

    def _loads(self, payload: bytes) -> Any:
        if msgspec is not None:
            return msgspec.json.decode(payload)
        return json.loads(payload)

    def _decode_current(self, entry: _Entry, payload: bytes) -> Any:
        cls: Any = entry.cls
        if _is_pydantic(cls):
            return cls.model_validate_json(payload)
        if msgspec is not None:
            decoder = entry.decoder
            if decoder is None:
                decoder = entry.decoder = msgspec.json.Decoder(cls)
            return decoder.decode(payload)
        return _jsonconv.convert(json.loads(payload), cls)

    def _current_decoder(self, entry: _Entry) -> Callable[[Any], Any]:
        """What ``_decode_current`` does for ``entry``, as one callable (the fast path)."""
        cls: Any = entry.cls
        if _is_pydantic(cls):
            return cls.model_validate_json
        if msgspec is not None and entry.decoder is not None:
            return entry.decoder.decode
        return lambda payload: _jsonconv.convert(json.loads(payload), cls)

    def _convert(self, cls: Any, data: Any) -> Any:
        if _is_pydantic(cls):
            return cls.model_validate(data)
        if msgspec is not None:
            return msgspec.convert(data, cls)
        return _jsonconv.convert(data, cls)


codec = Codec()
"""The process-wide default codec: used wherever no other is given."""

