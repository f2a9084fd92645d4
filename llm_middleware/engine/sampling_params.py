"""Per-request sampling parameters, validated once at submission."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InvalidRequestError

# Upper bounds that stop absurd requests before they cost anything.
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters of one stop string
MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's


@dataclass
class SamplingParams:
    """How to pick tokens for one request.  ``None`` fields take the model's generation config default.

    ``temperature=0`` means greedy decoding.  Stop strings are never part of the output.
    """

    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    #: Constrained decoding: ``{"json_schema": {...}}``, ``{"lark": "..."}`` or ``{"regex": "..."}``.
    guided: dict[str, Any] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SamplingParams:
        """Build from keyword options (as the public API receives them), rejecting unknown names."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InvalidRequestError(
                f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
                param=unknown[0],
            )
        stop = options.get("stop")
        if isinstance(stop, str):
            options = {**options, "stop": [stop]}
        elif stop is None and "stop" in options:
            options = {**options, "stop": []}
        if "stop_token_ids" in options and options["stop_token_ids"] is None:
            options = {**options, "stop_token_ids": []}
        params = cls(**options)
        params.validate()
        return params

    def validate(self) -> None:
        """Raise :class:`InvalidRequestError` naming the first field out of range."""

        def bad(param: str, why: str) -> None:
            raise InvalidRequestError(f"'{param}' {why}", param=param)

        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            bad("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad("min_tokens", f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.temperature is not None and not (0.0 <= self.temperature <= 100.0) or _nan(self.temperature):
            bad("temperature", f"must be between 0 and 100, got {self.temperature}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < -1:
            bad("top_k", f"must be -1, 0 (both disable it) or positive, got {self.top_k}")
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty is not None and not (0.0 < self.repetition_penalty <= 10.0):
            bad("repetition_penalty", f"must be in (0, 10], got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (-2.0 <= value <= 2.0):
                bad(name, f"must be between -2 and 2, got {value}")
        if not (1 <= self.n <= MAX_N):
            bad("n", f"must be between 1 and {MAX_N}, got {self.n}")
        if not (0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            bad("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        if len(self.stop) > MAX_STOP_STRINGS:
            bad("stop", f"accepts at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if any(len(s) > MAX_STOP_LENGTH for s in self.stop):
            bad("stop", f"strings must be at most {MAX_STOP_LENGTH} characters long")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            bad("stop_token_ids", f"accepts at most {MAX_STOP_TOKEN_IDS} token ids, got {len(self.stop_token_ids)}")
        if any(type(t) is not int for t in self.stop_token_ids):
            bad("stop_token_ids", "must be integers")
        if self.logit_bias and len(self.logit_bias) > MAX_LOGIT_BIAS:
            bad("logit_bias", f"accepts at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}")
        if self.seed is not None and not (-(2**63) <= self.seed < 2**64):
            bad("seed", f"must fit in 64 bits, got {self.seed}")
        for token, bias in (self.logit_bias or {}).items():
            if type(token) is not int:
                bad("logit_bias", f"keys must be token ids (integers), got {token!r}")
            if not (-100.0 <= bias <= 100.0):
                bad("logit_bias", f"values must be between -100 and 100, got {bias} for token {token}")

    def with_defaults(self, defaults: dict[str, Any]) -> SamplingParams:
        """Fill the ``None`` fields from ``defaults`` (the model's generation config)."""
        updates = {k: v for k, v in defaults.items() if getattr(self, k, 0) is None and v is not None}
        return replace(self, **updates) if updates else self

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature is not None and self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        """True when a repetition, presence or frequency penalty depends on the tokens so far."""
        return (self.repetition_penalty or 1.0) != 1.0 or bool(self.presence_penalty or self.frequency_penalty)


def _nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)
