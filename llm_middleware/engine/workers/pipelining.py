"""Async scheduling: a step is launched from the previous step's draws on the device before the host reads them.

Only a device that runs asynchronously gains (on the CPU the model runs on the step loop's own
thread), and only while nothing of the next step needs the pending tokens' values on the host.
"""

from __future__ import annotations

from ..sampling.sampler import Draws
from ..scheduling.scheduler import ScheduledBatch
from ..scheduling.sequence import PENDING_TOKEN, Sequence


class LaunchedStep:
    """A step queued on the device: its drawn sequences, where each draw goes in ``token_ids``, the draws."""

    __slots__ = ("seqs", "positions", "draws", "_rows")

    def __init__(self, seqs: list[Sequence], positions: list[int], draws: Draws) -> None:
        self.seqs = seqs
        self.positions = positions
        self.draws = draws
        self._rows: dict[int, int] | None = None

    @property
    def rows(self) -> dict[int, int]:
        """Each sequence's row in ``draws`` (by ``seq_id``)."""
        if self._rows is None:
            self._rows = {seq.seq_id: row for row, seq in enumerate(self.seqs)}
        return self._rows


class Pipelining:
    """Whether steps overlap: decode steps (``enabled``), and prompt chunks too (``prompts``)."""

    def __init__(self, enabled: bool, prompts: bool) -> None:
        self.enabled = enabled
        # Prompt chunks only where the device runs them asynchronously: the host queues the next chunk
        # while the device computes the last one.  On the CPU a chunk queued first would hold back the
        # pending step's first tokens.
        self.prompts = enabled and prompts

    def may_launch_ahead(self, batch: ScheduledBatch) -> bool:
        """Whether ``batch`` may be launched before the host reads the pending step's draws.

        Grammars and penalties read the tokens on the host, and so do prompt chunks: a chunk may
        go ahead only where none of its tokens is still a pending draw (a preempted sequence's
        recomputation could hold one).
        """
        if not (self.enabled and batch and all(s.pipelined for s in batch.decode)):
            return False
        return not batch.prefill or self.prompts and all(
            PENDING_TOKEN not in seq.token_ids[seq.num_computed : seq.num_computed + n] for seq, n in batch.prefill
        )
