"""A generation request as the step loop tracks it: its choices, its consumer and what is not yet sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..delivery import AsyncSink
from ..outputs import TokenLogprob
from ..sampling_params import SamplingParams
from .sequence import Sequence

if TYPE_CHECKING:
    import torch


@dataclass(eq=False)
class GenerationRequest:
    """All choices (``n`` sequences) of one request; results go to ``sink``.

    What its steps read of its parameters is made once, when it is prepared: the tokens that end
    it (``stop_ids``), its ``logit_bias`` as token ids and values on the device (``bias``), and the
    tokens banned until ``min_tokens`` (``min_tokens_ban``); with prefix caching, the root of its
    blocks' hash chain (``prefix_root``) and the hashes of its prompt's full blocks (``prompt_hashes``).
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: AsyncSink
    seqs: list[Sequence] = field(default_factory=list)
    pending_ids: list[list[int]] = field(default_factory=list)
    pending_logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    num_finished: int = 0
    stop_ids: frozenset[int] = frozenset()
    bias: tuple[torch.Tensor, torch.Tensor] | None = None
    min_tokens_ban: torch.Tensor | None = None
    prefix_root: bytes = b""
    prompt_hashes: list[bytes] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.seqs)
