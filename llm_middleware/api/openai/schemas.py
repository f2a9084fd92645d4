"""msgspec Structs for every request and response body of the OpenAI-compatible API.

Request Structs accept unknown fields (clients send vendor extras) and validate types and the
lengths of lists (:mod:`.limits`) only; range checks belong to the engine's sampling parameters.  Response Structs encode in the
field order OpenAI uses; fields typed ``... | UnsetType`` are left out of the JSON while unset,
which is how optional keys such as ``tool_calls`` or ``usage`` disappear.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from ..core.limits import MAX_CONTENT_PARTS, MAX_EMBEDDING_INPUTS, MAX_MESSAGES, MAX_PROMPTS, MAX_TOOL_CALLS, MAX_TOOLS

# --------------------------------------------------------------------------- requests


class ContentPart(Struct, kw_only=True):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    type: str
    text: str | None = None


class FunctionCallIn(Struct, kw_only=True):
    """A function call made by the assistant earlier in the conversation."""

    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(Struct, kw_only=True):
    """A tool call in an assistant message of the history."""

    function: FunctionCallIn
    id: str | None = None
    type: str = "function"


class ChatMessage(Struct, kw_only=True):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Meta(max_length=MAX_CONTENT_PARTS)] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Meta(max_length=MAX_TOOL_CALLS)] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(Struct, kw_only=True):
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Struct, kw_only=True):
    """A tool offered to the model."""

    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(Struct, kw_only=True):
    """The function named by a ``tool_choice`` object."""

    name: str


class NamedToolChoice(Struct, kw_only=True):
    """``tool_choice`` forcing one particular function."""

    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(Struct, kw_only=True):
    """Options of a streamed response."""

    include_usage: bool = False


class JsonSchemaFormat(Struct, kw_only=True):
    """The schema a ``json_schema`` response format must follow."""

    name: str = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True):
    """``response_format``: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


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


class ChatCompletionRequest(SamplingFields, kw_only=True):
    """Body of ``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Meta(max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: Annotated[list[ToolDefinition], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    """Body of ``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids,
    or a list of token-id lists."""

    prompt: str | Annotated[list[Any], Meta(max_length=MAX_PROMPTS)]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(Struct, kw_only=True):
    """Body of ``POST /v1/embeddings``."""

    input: str | Annotated[list[Any], Meta(max_length=MAX_EMBEDDING_INPUTS)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class TokenizeRequest(Struct, kw_only=True):
    """Body of ``POST /tokenize``: either ``prompt`` or chat ``messages`` (rendered by the template,
    with the assistant's turn opened)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[ToolDefinition], Meta(max_length=MAX_TOOLS)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(Struct, kw_only=True):
    """Body of ``POST /detokenize``."""

    tokens: list[int]
    model: str | None = None


# --------------------------------------------------------------------------- responses


class Usage(Struct, kw_only=True):
    """Token counts of a request (all choices together)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprobOut(Struct, kw_only=True):
    """An alternative token at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(Struct, kw_only=True):
    """The chosen token at a position, with alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(Struct, kw_only=True):
    """``choices[i].logprobs`` of a chat completion."""

    content: list[TokenLogprobOut] | None


class FunctionCallOut(Struct, kw_only=True):
    """A function call; ``arguments`` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str


class ToolCallOut(Struct, kw_only=True):
    """A tool call made by the model."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(Struct, kw_only=True):
    """The message of a chat completion choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChatChoice(Struct, kw_only=True):
    """One answer of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(Struct, kw_only=True):
    """Response of ``POST /v1/chat/completions`` without streaming."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(Struct, kw_only=True):
    """A piece of a streamed function call."""

    name: str | UnsetType = UNSET
    arguments: str


class ToolCallDelta(Struct, kw_only=True):
    """A piece of a streamed tool call; ``id``, ``type`` and the name come in its first piece."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionCallDelta


class ChatDelta(Struct, kw_only=True):
    """What a chunk adds to a choice's message."""

    role: Literal["assistant"] | UnsetType = UNSET
    content: str | None | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChatChunkChoice(Struct, kw_only=True):
    """One choice's part of a streamed chunk."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Struct, kw_only=True):
    """One ``data:`` event of a streamed chat completion.

    ``usage`` is absent unless ``stream_options.include_usage``; then it is ``null`` on every
    chunk except the last one, which has no choices.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None | UnsetType = UNSET


class CompletionLogprobs(Struct, kw_only=True):
    """``choices[i].logprobs`` of a text completion (the legacy layout)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct, kw_only=True):
    """One answer of a text completion (or its piece, when streamed)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class TextCompletion(Struct, kw_only=True):
    """Response of ``POST /v1/completions``, and each streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None | UnsetType = UNSET


class ModelCard(Struct, kw_only=True):
    """A served model.  ``random_weights`` marks demo models whose output is gibberish."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str
    max_model_len: int
    state: str
    random_weights: bool


class ModelList(Struct, kw_only=True):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingData(Struct, kw_only=True):
    """One embedding vector; a base64 string of little-endian float32 with ``encoding_format=base64``."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Struct, kw_only=True):
    """Token counts of an embeddings request."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    """Response of ``POST /v1/embeddings``."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class TokenizeResponse(Struct, kw_only=True):
    """Response of ``POST /tokenize``."""

    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(Struct, kw_only=True):
    """Response of ``POST /detokenize``."""

    prompt: str


class HealthStatus(Struct, kw_only=True):
    """Response of ``GET /health`` when the engine is ready."""

    status: Literal["ok"] = "ok"


# --------------------------------------------------------------------------- codecs

chat_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_request_decoder = msgspec.json.Decoder(CompletionRequest)
embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)
tokenize_request_decoder = msgspec.json.Decoder(TokenizeRequest)
detokenize_request_decoder = msgspec.json.Decoder(DetokenizeRequest)
