"""What the engine hands back to callers: stream deltas, whole completions, embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class TopLogprob:
    """One alternative token at a position, with its log-probability."""

    token_id: int
    token: str
    logprob: float
    bytes: bytes = b""  # the token's raw bytes (part of a character, for some tokens)


@dataclass(slots=True)
class TokenLogprob:
    """The chosen token at a position, its log-probability and the most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)
    bytes: bytes = b""  # the token's raw bytes (part of a character, for some tokens)


@dataclass(slots=True)
class Usage:
    """Token counts of one request (all choices together); ``cached_tokens`` of the prompt were served
    from the prefix cache rather than computed."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_json(cls, value: Any) -> Usage | None:
        """The counts of an OpenAI ``usage`` object (as JSON data), or None where ``value`` is none."""
        if not isinstance(value, dict):
            return None
        details = value.get("prompt_tokens_details")
        return cls(int(value.get("prompt_tokens") or 0), int(value.get("completion_tokens") or 0),
                   int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)


@dataclass(slots=True)
class Delta:
    """A piece of one choice's output, as streamed.

    ``text`` is always whole UTF-8 characters and never contains a stop string.  The last
    delta of a choice has ``finish_reason`` set (and ``stop``, the stop string, when one ended
    it); the last delta of the whole request (after every choice finished) carries ``usage``.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    stop: str | None = None

    def followed_by(self, later: Delta) -> Delta:
        """This delta and the next one of the same choice, as one."""
        logprobs = None
        if self.logprobs is not None or later.logprobs is not None:
            logprobs = [*(self.logprobs or ()), *(later.logprobs or ())]
        return Delta(self.index, self.text + later.text, self.token_ids + later.token_ids, logprobs,
                     later.finish_reason, later.usage, later.stop)


@dataclass(slots=True)
class Choice:
    """One whole generated answer."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None
    stop: str | None = None  # the stop string that ended the text, if one did


@dataclass(slots=True)
class Completion:
    """A finished request: every choice and the usage."""

    id: str
    model: str
    choices: list[Choice]
    usage: Usage
    prompt_token_ids: list[int]

    @property
    def text(self) -> str:
        """The first choice's text: what single-answer callers want."""
        return self.choices[0].text

    @classmethod
    def from_deltas(cls, deltas: list[Delta], request_id: str, model: str, prompt_ids: list[int]) -> Completion:
        """The completion a request's whole stream of deltas makes."""
        texts: dict[int, list[str]] = {}
        ids: dict[int, list[int]] = {}
        logprobs: dict[int, list[TokenLogprob]] = {}
        reasons: dict[int, FinishReason] = {}
        stops: dict[int, str] = {}
        usage = Usage(len(prompt_ids), 0)
        for d in deltas:
            texts.setdefault(d.index, []).append(d.text)
            ids.setdefault(d.index, []).extend(d.token_ids)
            if d.logprobs is not None:
                logprobs.setdefault(d.index, []).extend(d.logprobs)
            if d.finish_reason is not None:
                reasons[d.index] = d.finish_reason
            if d.stop is not None:
                stops[d.index] = d.stop
            if d.usage is not None:
                usage = d.usage
        choices = [
            Choice(index=i, text="".join(texts[i]), token_ids=ids[i], finish_reason=reasons[i],
                   logprobs=logprobs.get(i), stop=stops.get(i))
            for i in sorted(texts)
        ]
        return cls(id=request_id, model=model, choices=choices, usage=usage, prompt_token_ids=prompt_ids)


@dataclass(slots=True)
class Embeddings:
    """Embedding vectors, one per input, in input order."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(slots=True)
class ModelInfo:
    """A model served by the engine, as ``/v1/models`` lists it."""

    name: str
    source: str
    task: Literal["generate", "embed"]
    created: int
    max_model_len: int
    random_weights: bool
    state: Literal["loading", "ready", "failed"]
    error: str | None = None
