"""Turn a request body into a request Struct, or an error that says what the client got wrong."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from ...errors import InvalidRequestError, LLMError
from .http import Request

T = TypeVar("T")

# msgspec ends a validation message with " - at `$.messages[0].role`" (" - at `key` in `$.metadata`" for a
# mapping's key).
_PATH_SUFFIX = re.compile(r" - at (?:`key` in )?`\$\.?(?P<path>[^`]*)`$")
# ... or names a missing field of the top-level object: "Object missing required field `messages`".
_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")


class UnsupportedMediaTypeError(LLMError):
    """The body is not JSON (HTTP 415)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


def _check_content_type(request: Request) -> None:
    # A missing Content-Type is allowed: `curl -d` users forget it and the body says what it is.
    value = request.headers.get("content-type")
    if value is None:
        return
    media_type, _, params = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got '{value}'. Send the request body as JSON."
        )
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaTypeError(f"JSON bodies must be UTF-8 encoded, got charset '{charset.strip()}'.")


def validation_error_param(exc: msgspec.ValidationError) -> str | None:
    """The request field a msgspec validation error is about, as clients name it (``messages[0].role``)."""
    text = str(exc)
    match = _PATH_SUFFIX.search(text)
    path = match.group("path") if match else ""
    missing = _MISSING_FIELD.search(text)
    if missing:
        field = missing.group("field")
        return f"{path}.{field}" if path else field
    return path or None


def validation_error_message(exc: msgspec.ValidationError) -> str:
    """msgspec's message with the path rewritten to the field name clients know."""
    text = _PATH_SUFFIX.sub("", str(exc))
    param = validation_error_param(exc)
    return f"Invalid value for '{param}': {text}" if param else f"Invalid request body: {text}"


def decode_body(request: Request, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode ``request.body`` with ``decoder``; raise an :class:`LLMError` naming the problem."""
    _check_content_type(request)
    if not request.body.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return decoder.decode(request.body)
    except RecursionError:
        # msgspec stops at the interpreter's recursion limit (about a thousand levels).
        raise InvalidRequestError(
            "The JSON body is nested too deeply. Send values with fewer levels of nesting.", code="invalid_json"
        ) from None
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(validation_error_message(exc), param=validation_error_param(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports bytes that are not UTF-8 as a DecodeError since 0.23 (a UnicodeDecodeError before).
        try:
            request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("The request body is not valid UTF-8.", code="invalid_encoding") from None
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc}). Send valid JSON.", code="invalid_json"
        ) from None
