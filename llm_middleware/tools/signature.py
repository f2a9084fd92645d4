"""A Python function's parameters as a tool's JSON Schema, and a model's arguments checked against them.

The parameters become the fields of a msgspec Struct built from the signature, so msgspec both
writes the schema (types, ``Annotated[..., msgspec.Meta(...)]`` constraints and descriptions,
defaults) and checks the arguments a model wrote against the same types before the function runs.
A parameter annotated :class:`~llm_middleware.RequestInfo` is no argument of the model's: it is
left out of the schema and filled with the caller's request.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..request_info import RequestInfo


class ArgumentsError(ValueError):
    """The model's arguments do not fit the tool's parameters (the message says how, for the model)."""


def _is_request_info(hint: Any) -> bool:
    """True for ``RequestInfo``, ``RequestInfo | None`` and ``Annotated[RequestInfo, ...]``."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is RequestInfo:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return members == [RequestInfo]
    return False


def _inline(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """msgspec's ``{"$ref": ..., "$defs": {...}}`` as the object schema itself, other definitions kept beside it."""
    definitions = dict(schema.get("$defs", {}))
    body = dict(definitions.pop(name))
    body.pop("title", None)
    if definitions:
        body["$defs"] = definitions
    return body


@dataclass(frozen=True, slots=True)
class Signature:
    """What a function's signature means to a tool: the model's part as a Struct and its JSON Schema, and
    the name of the parameter that takes the caller's request (if any)."""

    arguments: type[msgspec.Struct]
    schema: dict[str, Any]
    request_parameter: str | None

    def keywords(self, arguments: str | bytes) -> dict[str, Any]:
        """The keyword arguments for a call, from the model's JSON ``arguments``; :class:`ArgumentsError` if they
        do not fit (the request parameter is not among them)."""
        try:
            struct = msgspec.json.decode(arguments or b"{}", type=self.arguments)
        except msgspec.DecodeError as exc:  # ValidationError is one: its message names the field
            raise ArgumentsError(str(exc)) from None
        return {field: getattr(struct, field) for field in struct.__struct_fields__}


def request_parameter_of(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s parameter annotated :class:`~llm_middleware.RequestInfo`, if any."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, NameError):
        return None
    return next((name for name, hint in hints.items() if name != "return" and _is_request_info(hint)), None)


def signature_of(fn: Callable[..., Any], name: str) -> Signature:
    """The :class:`Signature` of ``fn`` (a tool named ``name``); ``TypeError`` for what a model cannot call:
    ``*args``, ``**kwargs``, positional-only parameters, or types msgspec cannot describe."""
    try:
        parameters = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise TypeError(f"tool {name!r}: cannot read the signature of {fn!r}: {exc}") from None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    request_parameter = None
    for parameter in parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise TypeError(
                f"tool {name!r}: parameter {parameter.name!r} must be passable by name "
                "(no *args, **kwargs or positional-only parameters)"
            )
        hint = hints.get(parameter.name, Any)
        if _is_request_info(hint):
            request_parameter = parameter.name
            continue
        if parameter.default is parameter.empty:
            fields.append((parameter.name, hint))
        else:
            fields.append((parameter.name, hint, parameter.default))
    struct_name = f"{name}_arguments"
    try:
        # Unknown fields are refused, so a misspelt argument is the model's error rather than silently dropped.
        arguments = msgspec.defstruct(struct_name, fields, kw_only=True, forbid_unknown_fields=True)
        schema = _inline(msgspec.json.schema(arguments), struct_name)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tool {name!r}: cannot describe its parameters as JSON Schema: {exc}") from None
    return Signature(arguments, schema, request_parameter)
