"""Engine calls (messages or a prompt, sampling keyword options) -> OpenAI request bodies for an upstream."""

from __future__ import annotations

from typing import Any

from ..engine.sampling_params import SamplingParams
from ..errors import InvalidRequestError

# Sampling options whose request field has the same name and meaning (OpenAI's, or vLLM's extensions).
_SAME_NAME = (
    "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "n",
)


def _response_format(guided: dict[str, Any]) -> dict[str, Any]:
    if set(guided) == {"json_schema"}:
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": guided["json_schema"]}}
    raise InvalidRequestError(
        "guided decoding other than a JSON schema ('regex', 'lark') is not supported by a remote engine: "
        "OpenAI-compatible servers take only response_format",
        param="guided",
        code="unsupported_parameter",
    )


def sampling_fields(sampling: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """The request fields for ``sampling``, validated exactly as the embedded engine validates them."""
    SamplingParams.from_options(dict(sampling))
    fields = {name: value for name in _SAME_NAME if (value := sampling.get(name)) is not None}
    if sampling.get("logit_bias"):
        fields["logit_bias"] = {str(token): bias for token, bias in sampling["logit_bias"].items()}
    if sampling.get("logprobs"):
        top = sampling.get("top_logprobs") or 0
        # Chat takes a flag and a count; text completions take the count alone.
        fields.update({"logprobs": True, "top_logprobs": top} if chat else {"logprobs": top})
    if sampling.get("guided") is not None:
        fields["response_format"] = _response_format(sampling["guided"])
    return fields


def chat_body(
    messages: list[dict[str, Any]],
    model: str,
    fields: dict[str, Any],
    *,
    tools: list[dict[str, Any]] | None,
    chat_template_kwargs: dict[str, Any] | None,
    stream: bool,
) -> dict[str, Any]:
    """A ``/chat/completions`` body; streamed bodies ask for the usage chunk."""
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    body: dict[str, Any] = {"model": model, "messages": messages, **fields}
    if tools:
        body["tools"] = tools
    if chat_template_kwargs:
        body["chat_template_kwargs"] = chat_template_kwargs
    return _streamed(body) if stream else body


def completion_body(prompt: str | list[int], model: str, fields: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """A ``/completions`` body for one prompt (text or token ids)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, **fields}
    return _streamed(body) if stream else body


def embedding_body(inputs: str | list[str], model: str, dimensions: int | None) -> dict[str, Any]:
    """An ``/embeddings`` body asking for float vectors."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError("'input' must be a string or a non-empty list of strings", param="input")
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def _streamed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}
