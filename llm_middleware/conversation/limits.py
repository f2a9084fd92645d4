"""Bounds on the free-form JSON values of a turn: JSON Schemas, tool parameters, tool-call arguments."""

from __future__ import annotations

from typing import Any

from ..engine.text.plain_json import check_plain_json

#: Nesting levels of a free-form JSON value: an output schema, tool ``parameters``, tool-call arguments.
MAX_JSON_DEPTH = 64


def check_json_depth(value: Any, param: str) -> None:
    """Raise a 400 naming ``param`` when ``value`` nests deeper than :data:`MAX_JSON_DEPTH`."""
    check_plain_json(value, param, max_depth=MAX_JSON_DEPTH)
