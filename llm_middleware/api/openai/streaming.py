"""How OpenAI ends its event streams: ``data: [DONE]`` last, after a failure's ``data: {"error": ...}`` event."""

from __future__ import annotations

from dataclasses import dataclass

from msgspec import UNSET, UnsetType

from ..core.sse import Framing
from .errors import error_event

DONE = b"data: [DONE]\n\n"

FRAMING = Framing(last=DONE, error_event=error_event)


@dataclass(eq=False)
class StreamedAnswer:
    """What every chunk of one streamed answer repeats: the request's id, when it was created, the model;
    and whether the client asked for usage (``stream_options.include_usage``)."""

    request_id: str
    created: int
    model: str
    include_usage: bool

    @property
    def usage_field(self) -> None | UnsetType:
        """A chunk's ``usage`` before the last one: ``null`` when usage was asked for, otherwise left out."""
        return None if self.include_usage else UNSET
