"""``POST /v1/completions``: the legacy text completion endpoint, streamed or whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ...conversation.guided import regex_spec
from ...engine.outputs import Completion, Delta
from ...engine.sampling_params import MAX_TOP_LOGPROBS
from ...errors import InvalidRequestError
from ...runtime.cpu_pool import run_cpu
from ..core.decoding import decode_body
from ..core.http import Request, Response
from ..core.limits import MAX_PROMPTS
from ..core.options import sampling_options
from ..core.responses import json_response
from ..core.sse import EventStream, event, streaming_response
from ..core.streams import first_items, merge, resume
from .logprobs import completion_logprobs
from .streaming import FRAMING, StreamedAnswer
from .types.common import PromptTokensDetails, Usage
from .types.completions import CompletionChoice, CompletionRequest, TextCompletion, completion_request_decoder

if TYPE_CHECKING:
    from ...engine.engine import Engine

Prompt = str | list[int]


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(x) is int for x in value)


def _prompts(prompt: str | list[Any]) -> list[Prompt]:
    """One prompt per entry: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if _is_token_ids(prompt):
        return [prompt]
    if len(prompt) > MAX_PROMPTS:
        raise InvalidRequestError(f"'prompt' holds more than {MAX_PROMPTS} prompts; send fewer at once.", param="prompt")
    if prompt and all(isinstance(p, str) or _is_token_ids(p) for p in prompt):
        return prompt
    raise InvalidRequestError(
        "'prompt' must be a string, a list of strings, a list of token ids, or a list of token-id lists.",
        param="prompt",
    )


def _check_unsupported(request: CompletionRequest) -> None:
    if request.suffix:
        raise InvalidRequestError("'suffix' (fill-in-the-middle) is not supported.", param="suffix", code="unsupported_parameter")
    if request.best_of is not None and request.best_of != (request.n or 1):
        raise InvalidRequestError("'best_of' other than 'n' is not supported.", param="best_of", code="unsupported_parameter")
    if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(
            f"'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {request.logprobs}.", param="logprobs"
        )
    if request.echo and request.logprobs is not None:
        # Echoed logprobs need the prompt's log-probabilities, which the engine does not compute.
        raise InvalidRequestError(
            "'echo' together with 'logprobs' is not supported.", param="echo", code="unsupported_parameter"
        )


def _completion_call(engine: Engine, request: Request) -> tuple[CompletionRequest, list[Prompt], str, dict[str, Any]]:
    """Decode and check the body; its prompts, the model, and the engine's options: request-sized CPU work,
    for the CPU pool."""
    body = decode_body(request, completion_request_decoder)
    prompts = _prompts(body.prompt)
    _check_unsupported(body)
    model = engine.resolve_model(body.model, task="generate")
    options = sampling_options(body, max_tokens=body.max_tokens)
    if body.logprobs is not None:
        options["logprobs"] = True
        options["top_logprobs"] = body.logprobs
    if body.guided_regex is not None:
        options["guided"] = regex_spec(body.guided_regex, "guided_regex")
    return body, prompts, model, options


async def completions(engine: Engine, request: Request, request_id: str) -> Response:
    """Answer a text completion request; several prompts give ``n`` choices each, in prompt order."""
    body, prompts, model, options = await run_cpu(_completion_call, engine, request)
    n = body.n or 1
    if len(prompts) > 1:  # the queue takes all of them or none
        await engine.check_room(n * len(prompts), model=model)
    echoes = [await _echo(engine, p, model) if body.echo else "" for p in prompts]
    ids = [request_id] if len(prompts) == 1 else [f"{request_id}-{k}" for k in range(len(prompts))]

    if body.stream:
        streams = [engine.stream_complete(p, model=model, request_id=i, **options) for p, i in zip(prompts, ids)]
        firsts = await first_items(streams)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _CompletionChunks(
            request_id, int(time.time()), model, include_usage, n=n, echoes=echoes, logprobs=body.logprobs is not None
        )
        if len(streams) == 1:
            events = EventStream(streams[0], partial(chunks.on_delta, 0), FRAMING, first=firsts[0], closing=chunks.closing)
        else:
            merged = merge([resume(first, stream) for first, stream in zip(firsts, streams)])
            events = EventStream(merged, chunks.on_item, FRAMING, closing=chunks.closing, sources=streams)
        return streaming_response(events)

    tasks = [
        asyncio.ensure_future(engine.complete(p, model=model, request_id=i, **options)) for p, i in zip(prompts, ids)
    ]
    try:
        results: list[Completion] = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one prompt failed: the others' answers are of no use
            task.cancel()
        raise
    choices = [
        CompletionChoice(
            index=k * n + choice.index,
            text=echoes[k] + choice.text,
            logprobs=completion_logprobs(choice.logprobs or [], 0) if body.logprobs is not None else None,
            finish_reason=choice.finish_reason,
        )
        for k, result in enumerate(results)
        for choice in result.choices
    ]
    usage = Usage(
        prompt_tokens=sum(r.usage.prompt_tokens for r in results),
        completion_tokens=sum(r.usage.completion_tokens for r in results),
        total_tokens=sum(r.usage.total_tokens for r in results),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(r.usage.cached_tokens for r in results)),
    )
    return json_response(TextCompletion(id=request_id, created=int(time.time()), model=model, choices=choices, usage=usage))


async def _echo(engine: Engine, prompt: Prompt, model: str) -> str:
    """The prompt as text, to put in front of the answer (``echo``)."""
    if isinstance(prompt, str):
        return prompt
    return await run_cpu(engine.detokenize, prompt, model=model)


@dataclass(eq=False)
class _CompletionChunks(StreamedAnswer):
    """Turns engine deltas into text completion chunk events; holds per-choice state."""

    n: int
    echoes: list[str]
    logprobs: bool
    _offsets: dict[int, int] = field(default_factory=dict)  # choice index -> characters sent so far
    _usage: Usage = field(default_factory=lambda: Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0))

    def _chunk(self, choice: CompletionChoice) -> bytes:
        return event(
            TextCompletion(
                id=self.request_id,
                created=self.created,
                model=self.model,
                choices=[choice],
                usage=self.usage_field,
            )
        )

    def on_delta(self, prompt_index: int, delta: Delta) -> bytes:
        """Every event one delta produces, joined."""
        index = prompt_index * self.n + delta.index
        offset = self._offsets.get(index)
        text = delta.text
        if offset is None:  # the choice's first text starts with the echoed prompt
            text = self.echoes[prompt_index] + text
            offset = 0
        self._offsets[index] = offset + len(text)
        parts = []
        logprobs = completion_logprobs(delta.logprobs, offset) if self.logprobs and delta.logprobs else None
        if text or logprobs:
            parts.append(self._chunk(CompletionChoice(index=index, text=text, logprobs=logprobs)))
        if delta.finish_reason is not None:
            parts.append(self._chunk(CompletionChoice(index=index, text="", finish_reason=delta.finish_reason)))
        if delta.usage is not None:
            self._usage.prompt_tokens += delta.usage.prompt_tokens
            self._usage.completion_tokens += delta.usage.completion_tokens
            self._usage.total_tokens += delta.usage.total_tokens
            self._usage.prompt_tokens_details.cached_tokens += delta.usage.cached_tokens
        return b"".join(parts)

    def on_item(self, item: tuple[int, Delta]) -> bytes:
        """Every event a delta of the prompt at ``item[0]`` produces."""
        return self.on_delta(*item)

    def closing(self) -> bytes:
        """The closing chunk with no choices and the usage of all prompts together (``stream_options.include_usage``)."""
        if not self.include_usage:
            return b""
        return event(
            TextCompletion(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self._usage)
        )
