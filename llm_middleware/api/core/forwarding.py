"""What the middleware's metrics read of answers that an engine relays whole (such as ``RemoteEngine``'s).

Such an engine answers in a protocol's own bodies, which only the protocol's adapter can read:
the adapter supplies an :data:`AnswerReader`, and the metrics see a :class:`ForwardedAnswer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine.outputs import Usage


@dataclass(frozen=True, slots=True)
class ForwardedAnswer:
    """A relayed answer or stream chunk: the model that answered, whether it carries generated
    output, and its token counts where it has them."""

    model: str | None
    has_output: bool
    usage: Usage | None


#: Reads a relayed answer or stream chunk.
AnswerReader = Callable[[dict[str, Any]], ForwardedAnswer]
