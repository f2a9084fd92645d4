"""Bodies of ``POST /v1/chat/completions``: the request, the whole answer and the streamed chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from ...core.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_TOOL_CALLS, MAX_TOOLS
from .common import SamplingFields, Usage


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
    reasoning_content: str | None = None
    reasoning: str | None = None  # the same, as newer clients send it back


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
    max_tool_rounds: int | None = None


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
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
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
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
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


class ToolProgressData(Struct, kw_only=True):
    """What a progress event tells of one server-side call: its id and, once complete, its outcome."""

    tool_type: Literal["custom"] = "custom"
    call_id: str
    outcome: str | None = None


class ToolProgressChunk(Struct, kw_only=True):
    """An ``agentic_tool_call_progress`` event (``stream_options.include_tool_progress``): mistral.rs's
    fields (``type``, ``round``, ``tool_name``, ``phase``, ``data``) on a chunk without choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None | UnsetType = UNSET
    type: Literal["agentic_tool_call_progress"] = "agentic_tool_call_progress"
    round: int
    tool_name: str
    phase: Literal["calling", "complete"]
    data: ToolProgressData


chat_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
