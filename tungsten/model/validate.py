"""Validation of property values and link attributes against the schema (pure)."""

from __future__ import annotations

import re
from typing import Any

from tungsten.model.schema import FieldSpec, ResourceType, Schema

# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_INT_TEXT = re.compile(r"-?[0-9]+")


class ValidationError(ValueError):
    """A value does not match its declared type; the message names the field path."""


def check_field(schema: Schema, spec: FieldSpec, value: Any, path: str) -> None:
    """Check one property or complex-type field.  ``None`` is accepted everywhere."""
    if value is None:
        return
    if spec.is_list:
        if not isinstance(value, list):
            raise ValidationError(f"{path}: expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            _check_scalar_or_complex(schema, spec, item, f"{path}[{i}]")
        return
    _check_scalar_or_complex(schema, spec, value, path)


def _check_scalar_or_complex(schema: Schema, spec: FieldSpec, value: Any, path: str) -> None:
    if value is None:
        return
    t = spec.type
    if t in ("string", "dateTime", "time", "type"):
        if not isinstance(value, str):
            raise ValidationError(f"{path}: expected a string, got {_kind(value)}")
        if spec.enum is not None and value not in spec.enum:
            allowed = ", ".join(spec.enum)
            raise ValidationError(f"{path}: {value!r} is not one of: {allowed}")
    elif t in ("integer", "unsignedLong"):
        if isinstance(value, bool) or not isinstance(value, int):
            # TF's XSD checks accept integral strings too ("5"); so do we.
            if isinstance(value, str) and _INT_TEXT.fullmatch(value):
                value = int(value)
            else:
                raise ValidationError(f"{path}: expected an integer, got {_kind(value)}")
        if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
            lo, hi = spec.range
            raise ValidationError(f"{path}: {value} is out of range [{lo}, {hi}]")
    elif t == "boolean":
        if not isinstance(value, bool):
            raise ValidationError(f"{path}: expected a boolean, got {_kind(value)}")
    else:
        check_complex(schema, t, value, path)


def check_complex(schema: Schema, type_name: str, value: Any, path: str) -> None:
    """Check a complex (XSD) value: a JSON object whose keys are the type's fields."""
    if value is None:
        return
    fields = schema.complex.get(type_name)
    if fields is None:
        return  # a type the reference dump does not describe: accept any JSON
    if not isinstance(value, dict):
        raise ValidationError(f"{path}: expected an object of type {type_name}, got {_kind(value)}")
    for key, item in value.items():
        spec = fields.get(key)
        if spec is None:
            raise ValidationError(f"{path}.{key}: unknown field of {type_name}")
        check_field(schema, spec, item, f"{path}.{key}")


def check_props(schema: Schema, rt: ResourceType, body: dict[str, Any]) -> None:
    """Check every property present in a create/update body."""
    for name, spec in rt.props.items():
        if name in body:
            check_field(schema, spec, body[name], name)


def check_ref_attr(schema: Schema, rt: ResourceType, ref_field: str, attr: Any) -> None:
    spec = rt.refs[ref_field]
    if spec.attr is None or attr is None:
        return
    check_complex(schema, spec.attr, attr, f"{ref_field}.attr")


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
