"""`msgspec.convert` that says which field it refused and why, from the types alone.

msgspec's ValidationError is a sentence meant for people; no code here reads it. When a
conversion fails, the value is walked along its type, each field converted on its own with
its own type, so the first field refused is known by construction. The reason is worded
from the field's type (`msgspec.inspect`): its kind, bounds, choices and description.
The walk runs only on the failure path: a value that converts pays nothing.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi

__all__ = ["Path", "Refused", "convert", "dotted"]

T = TypeVar("T")
Path = tuple[str | int, ...]


def dotted(path: Path) -> str | None:
    """`("parameters", "referenceImages", 0, "mimeType")` as
    `parameters.referenceImages[0].mimeType` (None for the value itself)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


class Refused(ValueError):
    """A value its type refuses: `path` leads to the refused part, `reason` says why."""

    def __init__(self, path: Path, reason: str):
        self.path = path
        self.reason = reason
        self.field = dotted(path)
        super().__init__(f"{self.field}: {reason}" if self.field else reason)


def convert(data: Any, type_: Any, *, strict: bool = True) -> Any:
    """`msgspec.convert(data, type_)`, raising Refused (naming the field) instead of
    msgspec's ValidationError."""
    try:
        return msgspec.convert(data, type_, strict=strict)
    except msgspec.ValidationError as exc:
        # no one field at fault (a `__post_init__` refused the whole): msgspec's own words
        raise _locate(data, type_, (), strict) or Refused((), str(exc)) from None


def _fits(value: Any, annotation: Any, strict: bool) -> bool:
    try:
        msgspec.convert(value, annotation, strict=strict)
    except msgspec.ValidationError:
        return False
    return True


def _members(annotation: Any) -> tuple[Any, ...]:
    """The plain types of an annotation: Annotated stripped, unions split."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for arg in get_args(annotation) for m in _members(arg))
    return (annotation,)


def _locate(value: Any, annotation: Any, path: Path, strict: bool) -> Refused | None:
    if _fits(value, annotation, strict):
        return None
    members = _members(annotation)
    if isinstance(value, Mapping):
        structs = [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
        if len(structs) == 1:  # a field at fault, or None: the Struct refused the whole
            return _in_struct(value, structs[0], path, strict)
    if isinstance(value, list):
        items = [get_args(m)[0] for m in members if get_origin(m) is list]
        for i, item in enumerate(value if len(items) == 1 else ()):
            inner = _locate(item, items[0], (*path, i), strict)
            if inner is not None:
                return inner
    return _refused(value, annotation, path)


def _in_struct(
    value: Mapping[Any, Any], struct: type[msgspec.Struct], path: Path, strict: bool
) -> Refused | None:
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    if struct.__struct_config__.forbid_unknown_fields:
        for key in value:
            if key not in fields:
                return Refused((*path, key), _unknown(str(key), list(fields)))
    for name, field in fields.items():
        if field.required and name not in value:
            return Refused((*path, name), "is required")
    for key, item in value.items():
        if key in fields:
            inner = _locate(item, fields[key].type, (*path, key), strict)
            if inner is not None:
                return inner
    return None


def _unknown(key: str, fields: list[str]) -> str:
    near = difflib.get_close_matches(key, fields, n=1)
    if near:
        return f"unknown field; did you mean {near[0]}?"
    return "unknown field" + (f"; the fields are: {', '.join(fields)}" if len(fields) <= 12 else "")


# -- the reason, worded from the type ---------------------------------------------------------

_KINDS: dict[type, str] = {
    mi.StrType: "a string",
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.BoolType: "true or false",
    mi.NoneType: "null",
    mi.ListType: "an array",
    mi.TupleType: "an array",
    mi.VarTupleType: "an array",
    mi.DictType: "an object",
    mi.StructType: "an object",
}


def _refused(value: Any, annotation: Any, path: Path) -> Refused:
    info = mi.type_info(annotation)
    options = info.types if isinstance(info, mi.UnionType) else (info,)
    described = [o for o in options if isinstance(o, mi.Metadata)]
    plain = [o.type if isinstance(o, mi.Metadata) else o for o in options]
    reason = _reason(value, plain)
    description = next(
        (o.extra_json_schema.get("description") for o in described if o.extra_json_schema), None
    )
    return Refused(path, f"{reason} ({description})" if description else reason)


def _reason(value: Any, options: list[mi.Type]) -> str:
    for option in options:
        said = _against(value, option)
        if said is not None:
            return said
    wanted = " or ".join(dict.fromkeys(_kind(o) for o in options))
    return f"expected {wanted}, got {_json_kind(value)}"


def _against(value: Any, t: mi.Type) -> str | None:
    """What is wrong with `value` as a `t`, when it is of `t`'s kind (else None)."""
    if isinstance(t, mi.LiteralType) and type(value) in {type(v) for v in t.values}:
        choices = ", ".join(_show(v) for v in t.values)
        return f"must be one of {choices}; got {_show(value)}"
    if isinstance(t, mi.StrType) and isinstance(value, str):
        if t.min_length is not None and len(value) < t.min_length:
            return (
                "must not be empty"
                if t.min_length == 1
                else f"must be at least {t.min_length} characters"
            )
        if t.max_length is not None and len(value) > t.max_length:
            return f"is {len(value)} characters; the limit is {t.max_length}"
        return "does not have the form required"
    if isinstance(t, mi.IntType) and type(value) is int:
        low = t.ge if t.gt is None else t.gt + 1
        high = t.le if t.lt is None else t.lt - 1
        return f"must be an integer{_range(low, high)}; got {_show(value)}"
    if isinstance(t, mi.ListType) and isinstance(value, list):
        return f"must hold{_range(t.min_length, t.max_length)} items; got {len(value)}"
    return None


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of {low} or more"
    return f" of {high} at most" if high is not None else " in range"


def _kind(t: mi.Type) -> str:
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(_show(v) for v in t.values)
    return _KINDS.get(type(t), type(t).__name__.removesuffix("Type").lower())


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
