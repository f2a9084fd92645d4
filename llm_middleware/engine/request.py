"""A generation request as the step loop tracks it: its choices, its consumer and what is not yet sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from .delivery import Sink
from .outputs import TokenLogprob
from .sampling import SamplingParams
from .sequence import Sequence


@dataclass(eq=False)
class GenerationRequest:
    """All choices (``n`` sequences) of one request; results go to ``sink``."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    seqs: list[Sequence] = field(default_factory=list)
    pending_ids: list[list[int]] = field(default_factory=list)
    pending_logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    num_finished: int = 0

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.seqs)
