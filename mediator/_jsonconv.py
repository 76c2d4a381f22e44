"""The codec's standard-library JSON path (PyPy, or no msgspec): msgspec's wire format.

``dumps`` writes what ``msgspec.json.encode`` writes for the same dataclass; ``convert``
turns parsed JSON into a class by its type hints, as ``msgspec.convert`` does. Only what
events need: scalars, datetimes, UUIDs, decimals, enums, bytes (base64), containers,
Optional/Union/Literal, nested dataclasses and pydantic models.
"""

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import sys
import types
import typing
import uuid
from typing import Any, Dict, Tuple

__all__ = ["dumps", "convert"]

_NONE = type(None)
_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))  # X | Y from 3.10


def _datetime(value: datetime.datetime) -> str:
    text = value.isoformat()
    if value.tzinfo is not None and value.utcoffset() == datetime.timedelta(0):
        text = text[: -len("+00:00")] + "Z"
    return text


def _builtins(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, bool, int, float)):
        if isinstance(obj, enum.Enum):
            return _builtins(obj.value)
        return obj
    if isinstance(obj, enum.Enum):
        return _builtins(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: _builtins(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if isinstance(key, (int, float)) and not isinstance(key, bool):
                key = str(key)
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, int or float, got {type(key).__qualname__}")
            out[key] = _builtins(value)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_builtins(item) for item in obj]
    if isinstance(obj, datetime.datetime):
        return _datetime(obj)
    if isinstance(obj, (datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(obj).__qualname__} values are not JSON-encodable")


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes, in msgspec's format."""
    return json.dumps(_builtins(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _parse_datetime(text: str) -> datetime.datetime:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(text)


def _fail(value: Any, expected: Any, path: str) -> "typing.NoReturn":
    where = f" at `{path}`" if path else ""
    raise ValueError(f"Expected `{getattr(expected, '__name__', expected)}`, got `{type(value).__name__}`{where}")


def _hints(cls: type) -> Dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, vars(module) if module else None)


def convert(value: Any, tp: Any, path: str = "$") -> Any:
    """``value`` (parsed JSON) as an instance of ``tp``; ``ValueError`` names where it fails."""
    if tp is Any or tp is object:
        return value
    if tp is None or tp is _NONE:
        if value is None:
            return None
        _fail(value, "null", path)
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return convert(value, arg, path)
            except (ValueError, TypeError) as error:
                errors.append(str(error))
        raise ValueError(f"no member of {tp} matches at `{path}`: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"Invalid enum value {value!r} at `{path}`")
    if origin in (list, set, frozenset, tuple) or tp in (list, set, frozenset, tuple):
        if not isinstance(value, list):
            _fail(value, "array", path)
        args = typing.get_args(tp)
        container = origin or tp
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ValueError(f"Expected `array` of length {len(args)} at `{path}`")
            return tuple(convert(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return items if container is list else container(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            _fail(value, "object", path)
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return {
            _key(key, key_type, path): convert(item, value_type, f"{path}[{key!r}]") for key, item in value.items()
        }
    if not isinstance(tp, type):
        return value  # an annotation this path does not model: as parsed
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"Invalid enum value {value!r} at `{path}`") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(value, "bool", path)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(value, "int", path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        _fail(value, "float", path)
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(value, "str", path)
    if tp in (bytes, bytearray):
        if isinstance(value, str):
            return tp(base64.b64decode(value, validate=True))
        _fail(value, "str", path)
    if tp is datetime.datetime:
        return _parse(value, _parse_datetime, "datetime", path)
    if tp is datetime.date:
        return _parse(value, datetime.date.fromisoformat, "date", path)
    if tp is datetime.time:
        return _parse(value, datetime.time.fromisoformat, "time", path)
    if tp is uuid.UUID:
        return _parse(value, uuid.UUID, "uuid", path)
    if tp is decimal.Decimal:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return decimal.Decimal(str(value))
        return _parse(value, decimal.Decimal, "decimal", path)
    if dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path)
    validate = getattr(tp, "model_validate", None)
    if callable(validate):
        return validate(value)
    if isinstance(value, tp):
        return value
    _fail(value, tp, path)


def _parse(value: Any, parse: Any, name: str, path: str) -> Any:
    if not isinstance(value, str):
        _fail(value, "str", path)
    try:
        return parse(value)
    except (ValueError, decimal.InvalidOperation):
        raise ValueError(f"Invalid {name} {value!r} at `{path}`") from None


def _key(key: str, key_type: Any, path: str) -> Any:
    if key_type in (int, float):
        try:
            return key_type(key)
        except ValueError:
            raise ValueError(f"Invalid key {key!r} at `{path}`") from None
    return convert(key, key_type, path)


def _dataclass(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, dict):
        _fail(value, "object", path)
    hints = _hints(cls)
    init: Dict[str, Any] = {}
    later: Tuple[Tuple[str, Any], ...] = ()
    for field in dataclasses.fields(cls):
        if field.name not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"Object missing required field `{field.name}` at `{path}`")
            continue
        converted = convert(value[field.name], hints.get(field.name, Any), f"{path}.{field.name}")
        if field.init:
            init[field.name] = converted
        else:
            later += ((field.name, converted),)
    obj = cls(**init)
    for name, item in later:
        object.__setattr__(obj, name, item)
    return obj
