"""Bodies of Anthropic's Messages API: ``POST /v1/messages`` (request, message, stream events) and
``POST /v1/messages/count_tokens``.

Content blocks, tool choices and thinking settings are unions told apart by ``type``.  Blocks this
server cannot take (images, documents) decode, so that the refusal names them plainly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from ...engine.sampling_params import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from ..core.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_TOOLS

# ---- request content blocks ------------------------------------------------------------------


class TextBlockParam(Struct, kw_only=True, tag_field="type", tag="text"):
    """Text; ``cache_control`` and ``citations`` are accepted and ignored."""

    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlockParam(Struct, kw_only=True, tag_field="type", tag="image"):
    """An image: decoded so that the refusal can name it (this server takes text only)."""

    source: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class DocumentBlockParam(Struct, kw_only=True, tag_field="type", tag="document"):
    """A document: decoded so that the refusal can name it (this server takes text only)."""

    source: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class ToolUseBlockParam(Struct, kw_only=True, tag_field="type", tag="tool_use"):
    """A tool call the assistant made earlier; ``input`` is the arguments object."""

    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlockParam(Struct, kw_only=True, tag_field="type", tag="tool_result"):
    """The result of the call ``tool_use_id``: text, or text blocks."""

    tool_use_id: str
    content: (
        str | Annotated[list[TextBlockParam | ImageBlockParam | DocumentBlockParam], Meta(max_length=MAX_CONTENT_PARTS)]
        | None
    ) = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlockParam(Struct, kw_only=True, tag_field="type", tag="thinking"):
    """Thinking the assistant did earlier, replayed; the ``signature`` is not checked."""

    thinking: str
    signature: str | None = None


class RedactedThinkingBlockParam(Struct, kw_only=True, tag_field="type", tag="redacted_thinking"):
    """Thinking another server withheld; it cannot be shown to the model and is dropped."""

    data: str


class ServerToolUseBlockParam(Struct, kw_only=True, tag_field="type", tag="mcp_tool_use"):
    """A call the server ran itself, replayed in the assistant turn that made it."""

    id: str
    name: str
    input: dict[str, Any]
    server_name: str | None = None
    cache_control: dict[str, Any] | None = None


class ServerToolResultBlockParam(Struct, kw_only=True, tag_field="type", tag="mcp_tool_result"):
    """The result of a call the server ran itself, replayed after its ``mcp_tool_use`` block."""

    tool_use_id: str
    content: str | Annotated[list[TextBlockParam], Meta(max_length=MAX_CONTENT_PARTS)] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


ContentBlockParam = (
    TextBlockParam
    | ImageBlockParam
    | DocumentBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | ServerToolUseBlockParam
    | ServerToolResultBlockParam
)


class MessageParam(Struct, kw_only=True):
    """One turn of the conversation: a string or content blocks (``system`` turns: text only)."""

    role: Literal["user", "assistant", "system"]
    content: str | Annotated[list[ContentBlockParam], Meta(max_length=MAX_CONTENT_PARTS)]


# ---- tools, tool choice, thinking ------------------------------------------------------------


class ToolParam(Struct, kw_only=True):
    """A client tool: its ``name``, the JSON Schema of its ``input``, and what it does.

    ``type`` is ``custom`` or absent; Anthropic's server tools (web search, code execution) have
    other types and are refused.
    """

    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceAuto(Struct, kw_only=True, tag_field="type", tag="auto"):
    """The model decides whether to call tools."""

    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Struct, kw_only=True, tag_field="type", tag="any"):
    """The model must call one of the tools."""

    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Struct, kw_only=True, tag_field="type", tag="tool"):
    """The model must call the tool ``name``."""

    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Struct, kw_only=True, tag_field="type", tag="none"):
    """The model must not call tools."""


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(Struct, kw_only=True, tag_field="type", tag="enabled"):
    """Think before answering (the chat template's ``enable_thinking``); ``budget_tokens`` is not enforced."""

    budget_tokens: int | None = None
    display: str | None = None


class ThinkingDisabled(Struct, kw_only=True, tag_field="type", tag="disabled"):
    """Answer without thinking."""


class ThinkingAdaptive(Struct, kw_only=True, tag_field="type", tag="adaptive"):
    """Think as the model's template decides by default."""

    display: str | None = None


class ThinkingBetweenTools(Struct, kw_only=True, tag_field="type", tag="between_tools"):
    """Think between tool calls: as with ``adaptive``, the template's default decides."""


ThinkingConfig = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | ThinkingBetweenTools


class JSONOutputFormat(Struct, kw_only=True, tag_field="type", tag="json_schema"):
    """The answer is JSON following ``schema`` (constrained decoding)."""

    schema: dict[str, Any]


class OutputConfig(Struct, kw_only=True):
    """How the answer is written: ``format`` constrains it; ``effort`` is accepted and not used."""

    format: JSONOutputFormat | None = None
    effort: str | None = None


class Metadata(Struct, kw_only=True):
    """Request metadata; accepted and not used."""

    user_id: str | None = None


# ---- requests --------------------------------------------------------------------------------


class ConversationFields(Struct, kw_only=True):
    """What both routes render into a prompt."""

    model: str
    messages: Annotated[list[MessageParam], Meta(max_length=MAX_MESSAGES)]
    system: str | Annotated[list[TextBlockParam], Meta(max_length=MAX_CONTENT_PARTS)] | None = None
    tools: Annotated[list[ToolParam], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


StopSequence = Annotated[str, Meta(min_length=1, max_length=MAX_STOP_LENGTH)]


class MessagesRequest(ConversationFields, kw_only=True):
    """Body of ``POST /v1/messages``.  ``max_tokens`` is required, as Anthropic requires it."""

    max_tokens: Annotated[int, Meta(ge=1)]
    stop_sequences: Annotated[list[StopSequence], Meta(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: Metadata | None = None
    service_tier: str | None = None


class CountTokensRequest(ConversationFields, kw_only=True):
    """Body of ``POST /v1/messages/count_tokens``: the prompt of a message request, without sampling."""


class TokenCount(Struct, kw_only=True):
    """Response of ``POST /v1/messages/count_tokens``: the prompt's length in tokens."""

    input_tokens: int


# ---- the message -----------------------------------------------------------------------------


class TextBlock(Struct, kw_only=True, tag_field="type", tag="text"):
    """Text the model wrote."""

    text: str


class ThinkingBlock(Struct, kw_only=True, tag_field="type", tag="thinking"):
    """What the model thought before answering; ``signature`` is empty (nothing is signed here)."""

    thinking: str
    signature: str = ""


class ToolUseBlock(Struct, kw_only=True, tag_field="type", tag="tool_use"):
    """A call of the tool ``name`` with ``input`` as its arguments."""

    id: str
    name: str
    input: dict[str, Any]


class ServerToolUseBlock(Struct, kw_only=True, tag_field="type", tag="mcp_tool_use"):
    """A call the server ran itself (Anthropic's block for tools run on the server's side, which clients
    show and do not run again); ``server_name`` says what ran it (``app``, an MCP server's name, ``dispatcher``)."""

    id: str
    name: str
    server_name: str
    input: dict[str, Any]


class ServerToolResultBlock(Struct, kw_only=True, tag_field="type", tag="mcp_tool_result"):
    """The result of the server's call ``tool_use_id`` (``is_error``: what the model was told instead)."""

    tool_use_id: str
    content: str
    is_error: bool = False


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock | ServerToolUseBlock | ServerToolResultBlock

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(Struct, kw_only=True):
    """Token counts; ``input_tokens`` excludes the prompt tokens read from the cache, as Anthropic counts."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    service_tier: Literal["standard"] = "standard"


class Message(Struct, kw_only=True):
    """Response of ``POST /v1/messages`` without streaming (and the start of a stream, empty)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


# ---- stream events ---------------------------------------------------------------------------


class TextDelta(Struct, kw_only=True, tag_field="type", tag="text_delta"):
    """More text of a text block."""

    text: str


class ThinkingDelta(Struct, kw_only=True, tag_field="type", tag="thinking_delta"):
    """More thinking of a thinking block."""

    thinking: str


class InputJsonDelta(Struct, kw_only=True, tag_field="type", tag="input_json_delta"):
    """More of a tool call's arguments: the deltas of one block joined are its JSON ``input``."""

    partial_json: str


class SignatureDelta(Struct, kw_only=True, tag_field="type", tag="signature_delta"):
    """A thinking block's signature, sent just before the block stops (empty: nothing is signed here)."""

    signature: str = ""


class MessageStart(Struct, kw_only=True, tag_field="type", tag="message_start"):
    """The first event: the message with no content yet."""

    message: Message


class Ping(Struct, kw_only=True, tag_field="type", tag="ping"):
    """Nothing but a sign of life."""


class ContentBlockStart(Struct, kw_only=True, tag_field="type", tag="content_block_start"):
    """Block ``index`` begins (empty)."""

    index: int
    content_block: ContentBlock


class ContentBlockDelta(Struct, kw_only=True, tag_field="type", tag="content_block_delta"):
    """More of block ``index``."""

    index: int
    delta: TextDelta | ThinkingDelta | InputJsonDelta | SignatureDelta


class ContentBlockStop(Struct, kw_only=True, tag_field="type", tag="content_block_stop"):
    """Block ``index`` is complete."""

    index: int


class MessageDeltaFields(Struct, kw_only=True):
    """Why the message stopped."""

    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(Struct, kw_only=True):
    """The whole request's token counts (totals, not increments)."""

    output_tokens: int
    input_tokens: int | UnsetType = UNSET
    cache_creation_input_tokens: int | UnsetType = UNSET
    cache_read_input_tokens: int | UnsetType = UNSET


class MessageDelta(Struct, kw_only=True, tag_field="type", tag="message_delta"):
    """The message's stop reason and usage, once every block is complete."""

    delta: MessageDeltaFields
    usage: MessageDeltaUsage


class MessageStop(Struct, kw_only=True, tag_field="type", tag="message_stop"):
    """The last event."""


StreamEvent = (
    MessageStart | Ping | ContentBlockStart | ContentBlockDelta | ContentBlockStop | MessageDelta | MessageStop
)


# ---- errors ----------------------------------------------------------------------------------


class ErrorObject(Struct, kw_only=True):
    """What went wrong, in Anthropic's words (``invalid_request_error``, ``rate_limit_error``, ...)."""

    type: str
    message: str


class ErrorResponse(Struct, kw_only=True, tag_field="type", tag="error"):
    """Every error response on these routes, and the ``error`` event of a stream that fails."""

    error: ErrorObject


messages_request_decoder = msgspec.json.Decoder(MessagesRequest)
count_tokens_request_decoder = msgspec.json.Decoder(CountTokensRequest)
