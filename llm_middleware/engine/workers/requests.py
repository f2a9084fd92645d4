"""Generation requests checked against one model and built into what their steps use."""

from __future__ import annotations

import torch

from ...errors import ContextLengthExceededError, InvalidRequestError
from ..delivery import AsyncSink
from ..model.properties import ModelProperties
from ..sampling.grammar import GrammarCompiler
from ..sampling.sampler import logit_bias_tensors, token_tensor
from ..sampling_params import SamplingParams
from ..scheduling import prefix_hash
from ..scheduling.request import GenerationRequest
from ..scheduling.sequence import Sequence
from ..text.detokenizer import IncrementalDetokenizer, TokenDecoder


class RequestFactory:
    """Checks a request's prompt and lengths, then makes its sequences, grammar matchers, bias tensors and stop sets."""

    def __init__(self, props: ModelProperties, decoder: TokenDecoder, grammars: GrammarCompiler, block_size: int,
                 prefix_root: bytes | None) -> None:
        self.props = props
        self.max_model_len = props.max_model_len
        self.decoder = decoder
        self.grammars = grammars
        self.block_size = block_size
        self.prefix_root = prefix_root  # None: no prefix caching

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise for an empty prompt, or a prompt (with ``max_tokens``) longer than the context."""
        limit = self.max_model_len
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty: it must contain at least one token", param="prompt")
        if len(prompt_ids) >= limit:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {limit} tokens, but the prompt has "
                f"{len(prompt_ids)} tokens; shorten the prompt or the conversation",
                param="messages",
            )
        if params.max_tokens is not None and (asked := len(prompt_ids) + params.max_tokens) > limit:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {limit} tokens, but {asked} were requested "
                f"({len(prompt_ids)} in the prompt, max_tokens {params.max_tokens} for the answer); "
                "ask for fewer tokens or shorten the prompt",
                param="max_tokens",
            )

    def build(self, prompt_ids: list[int], params: SamplingParams, sink: AsyncSink,
              request_id: str) -> GenerationRequest:
        """The request with its ``n`` sequences; compiles its grammar and hashes its prompt's blocks
        (request-sized CPU work)."""
        props = self.props
        params = params.with_defaults(props.defaults)
        matcher = self.grammars.compile(params.guided) if params.guided is not None else None
        room = self.max_model_len - len(prompt_ids)
        request = GenerationRequest(request_id, prompt_ids, params, sink)
        request.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else frozenset(props.eos_ids))
        request.bias = logit_bias_tensors(params.logit_bias, props.logits_width)
        if params.min_tokens:
            request.min_tokens_ban = token_tensor([*props.eos_ids, *params.stop_token_ids], props.logits_width)
        if self.prefix_root is not None:
            request.prefix_root = self.prefix_root
            request.prompt_hashes = prefix_hash.chain(request.prefix_root, prompt_ids, self.block_size)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=props.output_device)
                generator.manual_seed((params.seed + index) % 2**64)  # choice i of n: its own stream
            detok = IncrementalDetokenizer(self.decoder, prompt_ids, params.stop)
            max_total = len(prompt_ids) + min(room, params.max_tokens or room)
            seq_matcher = matcher.deep_copy() if matcher is not None else None
            request.seqs.append(Sequence(request, index, prompt_ids, params, generator, detok, max_total, seq_matcher,
                                         request.prompt_hashes))
            request.pending_ids.append([])
            request.pending_logprobs.append([])
        return request
