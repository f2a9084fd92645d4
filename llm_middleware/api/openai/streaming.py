"""How OpenAI ends its event streams: ``data: [DONE]`` last, after a failure's ``data: {"error": ...}`` event."""

from __future__ import annotations

from ..core.sse import Framing
from .errors import error_event

DONE = b"data: [DONE]\n\n"

FRAMING = Framing(last=DONE, error_event=error_event)
