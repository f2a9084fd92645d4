"""Fields and bodies that chat and text completions share."""

from __future__ import annotations

from msgspec import Struct, field


class StreamOptions(Struct, kw_only=True):
    """Options of a streamed response."""

    include_usage: bool = False
    include_tool_progress: bool = False


class SamplingFields(Struct, kw_only=True):
    """Sampling fields shared by chat and text completions (OpenAI's plus common extensions)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    guided_regex: str | None = None


class PromptTokensDetails(Struct, kw_only=True):
    """What the prompt's tokens were: ``cached_tokens`` of them came from the prefix cache."""

    cached_tokens: int = 0


class Usage(Struct, kw_only=True):
    """Token counts of a request (all choices together)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = field(default_factory=PromptTokensDetails)
