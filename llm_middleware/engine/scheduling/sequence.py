"""A sequence being generated: its tokens, its KV blocks and its progress, as plain CPU state."""

from __future__ import annotations

import itertools
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..outputs import FinishReason
    from ..sampling_params import SamplingParams
    from ..text.detokenizer import IncrementalDetokenizer
    from .request import GenerationRequest

_ids = itertools.count()

#: Stands in ``token_ids`` for a token drawn on the device whose value the host has not read yet.
PENDING_TOKEN = -1


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """One choice of one request.

    ``token_ids`` holds the prompt followed by the output; the KV cache holds the first
    ``num_computed`` of them.  A sequence with one uncomputed token is decoding; with more,
    it is (still) prefilling.

    ``block_hashes`` names the full blocks of ``token_ids`` whose tokens the host knows, as far as
    they are known (``prefix_hash``); the first ``num_committed_blocks`` of ``block_table`` are
    computed and in the prefix cache (or hold the same contents as a block that is), so the
    sequence never writes to them again.
    """

    __slots__ = (
        "seq_id", "request", "index", "token_ids", "num_prompt_tokens", "num_computed",
        "block_table", "status", "params", "generator", "detokenizer", "finish_reason",
        "max_total_tokens", "matcher", "pipelined", "block_hashes", "num_committed_blocks", "num_cached_tokens",
    )

    def __init__(
        self,
        request: GenerationRequest,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        generator: torch.Generator | None,
        detokenizer: IncrementalDetokenizer,
        max_total_tokens: int,
        matcher: Any = None,
        block_hashes: list[bytes] | None = None,
    ) -> None:
        self.seq_id = next(_ids)
        self.request = request
        self.index = index
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.num_computed = 0
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.params = params
        self.generator = generator
        self.detokenizer = detokenizer
        self.finish_reason: FinishReason | None = None
        self.max_total_tokens = max_total_tokens
        self.matcher = matcher  # llguidance matcher when the output must follow a grammar
        # Whether a step may be launched before the host has read this sequence's previous token:
        # grammars and penalties need the token values to prepare the next draw.
        self.pipelined = matcher is None and not params.penalized
        self.block_hashes: list[bytes] = list(block_hashes or ())
        self.num_committed_blocks = 0
        # Prompt tokens served from the prefix cache when the sequence first started (None before).
        self.num_cached_tokens: int | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def reset_for_recompute(self) -> None:
        """Forget the KV cache (after preemption, its blocks freed): everything is prefilled again later,
        from whatever of it the prefix cache still holds."""
        self.num_computed = 0
        self.status = SequenceStatus.WAITING

