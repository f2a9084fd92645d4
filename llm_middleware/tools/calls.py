"""One server-side tool call: what the permission hook sees of it, and what it gave the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

#: How a call ended: ``ok``; ``error`` (the tool raised, or its source failed); ``timeout``; ``refused``
#: (``tool_permission`` said no); ``too_large`` (the result passed the size cap); ``invalid_arguments``
#: (the model's arguments did not fit the tool); ``unavailable`` (no such tool right now).
Outcome = Literal["ok", "error", "timeout", "refused", "too_large", "invalid_arguments", "unavailable"]


@dataclass(frozen=True, slots=True)
class ToolInvocation:
    """A call the model made to a tool the server runs, as ``tool_permission(call, info)`` sees it:
    ``arguments`` is the model's JSON object (``{}`` when it wrote none or something else)."""

    name: str
    arguments: dict[str, Any]
    call_id: str
    round: int


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one call gave the model: ``content`` is the text the next round's prompt holds."""

    call_id: str
    name: str
    content: str
    outcome: Outcome
    seconds: float


_encoder = msgspec.json.Encoder()


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads: a string as it is, anything else as JSON
    (dicts, lists, numbers, dataclasses, msgspec Structs ...); ``TypeError`` for what has no JSON form."""
    if isinstance(value, str):
        return value
    return _encoder.encode(value).decode()
