"""When waiting prompts start: an idle worker waits for the rest of a burst, a busy one holds a few late prompts back.

Requests sent together reach a worker's inbox one by one as the event loop reads them.  A prompt
chunk started with the first few costs the same host time as a full one and holds the GIL that
the intake of the rest needs, so a burst started at once would be prefilled in many small chunks.
Both waits end once the prompts fill a chunk, once no more are on their way (``Intake``), or
after 25 ``burst_window_ms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection

from .intake import Intake
from .request import GenerationRequest
from .sequence import Sequence

logger = logging.getLogger("llm_middleware")

#: The longest wait, in burst windows.
MAX_WINDOWS = 25


class BurstPolicy:
    """Decides how long waiting prompts wait for the ones still on their way."""

    def __init__(self, burst_window_ms: float, intake: Intake, max_prefill_tokens: int) -> None:
        self.window = burst_window_ms / 1000
        self.intake = intake
        self.max_prefill_tokens = max_prefill_tokens
        self._held_since: float | None = None  # since when waiting prompts wait for the rest of a burst

    def gather(self, inbox: Collection[GenerationRequest], wake: threading.Condition,
               stopping: Callable[[], bool]) -> None:
        """Called idle, holding ``wake``, with requests in ``inbox``: wait while more keep arriving.

        The wait goes on while each arrival comes within a window of the last or the server is
        still reading requests, until the inbox fills a prompt chunk.
        """
        began = time.monotonic()
        deadline = began + MAX_WINDOWS * self.window
        seen = len(inbox)
        while not stopping():
            tokens = sum(len(r.prompt_ids) * len(r.seqs) for r in inbox)
            remaining = deadline - time.monotonic()
            if tokens >= self.max_prefill_tokens or remaining <= 0:
                break
            wake.wait(min(self.window, remaining))
            if len(inbox) == seen and not self.intake.pending:  # none came, none on its way
                break
            seen = len(inbox)
        logger.debug("burst: %d requests after %.1f ms", len(inbox), (time.monotonic() - began) * 1000)

    def admits_prompts(self, waiting: deque[Sequence], in_flight: bool) -> bool:
        """Whether the next step may start ``waiting`` prompts; ``in_flight``: a launched step is still computing.

        The rest of a burst reaches the inbox while the first prompt chunk computes.  Started as
        they come, the late prompts would each take a step of their own, queued one behind the
        other, whose launches cost the host about as much however few their prompts.  So while a
        step is in flight and the server is still reading requests, prompts that fill less than a
        chunk wait: the running sequences decode meanwhile, and the device is busy anyway.
        """
        if not (in_flight and waiting and self.intake.pending) or (
                sum(seq.num_uncomputed for seq in waiting) >= self.max_prefill_tokens):
            self._held_since = None
            return True
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since >= MAX_WINDOWS * self.window
