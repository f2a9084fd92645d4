"""OpenAI's fields that constrain the output (``response_format`` and vLLM's ``guided_regex``) as the
core's :class:`~...conversation.turn.OutputFormat`."""

from __future__ import annotations

from ...conversation.turn import TEXT, OutputFormat
from ...errors import InvalidRequestError
from .types.chat import ResponseFormat


def output_format(response_format: ResponseFormat | None, guided_regex: str | None) -> OutputFormat:
    """What ``response_format`` or ``guided_regex`` ask the answer to be (one of them at most)."""
    json_format = response_format is not None and response_format.type != "text"
    if guided_regex is not None:
        if json_format:
            raise InvalidRequestError(
                "'guided_regex' cannot be combined with a JSON response_format.",
                param="guided_regex",
            )
        return OutputFormat(type="regex", pattern=guided_regex, param="guided_regex")
    if response_format is None or not json_format:
        return TEXT
    if response_format.type == "json_object":
        return OutputFormat(type="json_object", param="response_format")
    spec = response_format.json_schema
    if spec is None:
        raise InvalidRequestError(
            "response_format of type 'json_schema' needs a 'json_schema' object.", param="response_format.json_schema"
        )
    return OutputFormat(type="json_schema", schema=spec.schema, param="response_format.json_schema.schema")
