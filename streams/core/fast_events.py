"""Decode and validate a plainly valid input message in one pass (msgspec), before the schema path.

The structs are generated from the JSON Schemas in `schemas/`, which stay the one source of truth. A struct
accepts a subset of what its schema accepts: of a property's `anyOf` branches it keeps those it can say
exactly (so `ts` only as integer epoch milliseconds, not as a date-time string), and a schema keyword it
does not know raises `UnsupportedSchema` at import rather than being skipped. Whatever a struct refuses
goes to `streams.core.events`' schema path, which judges it and words the error, so errors are unchanged.
tests/unit/core/test_fast_events.py checks that both paths give the same events and rejections.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

STRING_KEYS = {"type", "minLength", "maxLength", "pattern", "description"}
NUMBER_KEYS = {"type", "minimum", "maximum", "description"}
NOTE_KEYS = {"description"}


class UnsupportedSchema(ValueError):
    """A schema construct the generated struct cannot say exactly."""


def branch_type(spec: dict[str, Any]) -> Any:
    """The msgspec type of one schema branch, or None when it has no exact form (the branch is left out)."""
    if "anyOf" in spec:
        if set(spec) - {"anyOf"} - NOTE_KEYS:
            raise UnsupportedSchema(f"anyOf with other keywords: {sorted(spec)}")
        kept = [t for t in map(branch_type, spec["anyOf"]) if t is not None]
        if not kept:
            return None
        union = kept[0]
        for t in kept[1:]:
            union = union | t
        return union
    if "const" in spec:
        return Literal[spec["const"]]
    kind = spec.get("type")
    if kind == "string":
        if "format" in spec:
            return None
        _known(spec, STRING_KEYS)
        return Annotated[str, msgspec.Meta(min_length=spec.get("minLength"), max_length=spec.get("maxLength"),
                                           pattern=python_pattern(spec.get("pattern")))]
    if kind in ("integer", "number"):
        _known(spec, NUMBER_KEYS)
        number = int if kind == "integer" else float
        return Annotated[number, msgspec.Meta(ge=spec.get("minimum"), le=spec.get("maximum"))]
    if kind == "boolean":
        _known(spec, NOTE_KEYS | {"type"})
        return bool
    if kind == "null":
        return type(None)
    raise UnsupportedSchema(f"schema branch {spec}")


def python_pattern(pattern: str | None) -> str | None:
    """A schema's (ECMA-262) pattern for Python's `re.search`: a final `$` ends the string there, where
    Python's would also match before a final newline ("USD\\n" must not pass `^[A-Z]{3}$`)."""
    if pattern is None:
        return None
    body = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if "$" in body.replace(r"\$", ""):
        raise UnsupportedSchema(f"pattern {pattern!r}: `$` only at its end")
    return body


def _known(spec: dict[str, Any], keys: set[str]) -> None:
    unknown = set(spec) - keys
    if unknown:
        raise UnsupportedSchema(f"keywords {sorted(unknown)} in {spec}")


def struct_for(kind: str, schema: dict[str, Any]) -> type[msgspec.Struct]:
    """The struct of an event kind's schema: required properties without default, the others default None."""
    if schema.get("type") != "object":
        raise UnsupportedSchema(f"{kind}: the schema is not an object")
    required = set(schema.get("required", ()))
    fields: list[Any] = []
    for name, spec in schema["properties"].items():
        field_type = branch_type(spec)
        if field_type is None:
            raise UnsupportedSchema(f"{kind}.{name}: no branch has an exact form")
        fields.append((name, field_type) if name in required else (name, field_type, None))
    forbid = schema.get("additionalProperties", True) is False
    return msgspec.defstruct(f"{kind.title()}Event", fields, kw_only=True, forbid_unknown_fields=forbid)


def decode_valid(struct: type[msgspec.Struct], raw: bytes) -> list[tuple[int | None, dict[str, Any]]] | None:
    """The events of a message each with its index in a batch (None: a single object); None when the message
    is not plainly valid (the schema path then judges each event). orjson decodes, as on the schema path, so
    the JSON grammar is the same (msgspec's decoder skips unknown fields unchecked: invalid UTF-8 or a number
    out of range there would pass); msgspec checks each decoded object against the struct (one object at a
    time: converting to a `list[...]` type costs ~1.3 us more a message)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    events = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    try:
        for _, event in events:
            msgspec.convert(event, struct)
    except msgspec.ValidationError:
        return None
    return events or None
