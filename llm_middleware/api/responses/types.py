"""Bodies of the Responses API (``/v1/responses``): the request, its input items, the response object,
its output items and the streamed events, in the shapes the official SDK parses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..core.limits import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_TOOLS

#: OpenAI's bounds on ``metadata``: 16 pairs, keys of 64 characters, values of 512.
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]

# ---- the request ------------------------------------------------------------------------------------


class InputPart(Struct, kw_only=True):
    """A part of an input item's content: ``input_text``, a replayed ``output_text`` or ``refusal``,
    or ``reasoning_text`` / ``summary_text`` of a replayed reasoning item."""

    type: str
    text: str | None = None
    refusal: str | None = None


Parts = Annotated[list[InputPart], Meta(max_length=MAX_CONTENT_PARTS)]
#: The longest item id or call id taken (OpenAI's are about 50 characters): ids are stored, never prompted.
MAX_ID_LENGTH = 256


class InputToolError(Struct, kw_only=True):
    """The ``error`` of a replayed ``mcp_call`` item: OpenAI's error object (only its text is read)."""

    type: str | None = None
    message: str | None = None
    content: str | Parts | None = None


class InputItem(Struct, kw_only=True):
    """One item of ``input``, told apart by ``type`` (an item without one is a message): ``message``,
    ``function_call``, ``function_call_output``, ``reasoning`` or a replayed ``mcp_call`` (a call the
    server ran); each uses the fields of its kind."""

    type: str | None = None
    id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] | None = None
    status: str | None = None
    role: str | None = None
    content: str | Parts | None = None
    call_id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | Parts | None = None
    summary: Parts | None = None
    server_label: str | None = None
    error: str | InputToolError | None = None


class FunctionTool(Struct, kw_only=True):
    """A tool offered to the model; only ``{"type": "function", ...}`` (flat: no ``function`` wrapper) is served."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(Struct, kw_only=True):
    """``tool_choice`` as an object: ``{"type": "function", "name": ...}`` forces that function."""

    type: str
    name: str | None = None


class TextFormat(Struct, kw_only=True):
    """``text.format``: free text, any JSON object, or JSON following ``schema`` (flat, as Responses sends it)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(Struct, kw_only=True):
    """``text``: the output's format (``verbosity`` is accepted and ignored)."""

    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(Struct, kw_only=True):
    """``reasoning``: ``effort`` ``none`` or ``minimal`` turns a thinking template's thinking off, any other turns it on."""

    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(Struct, kw_only=True):
    """Body of ``POST /v1/responses``."""

    model: str | None = None
    input: str | Annotated[list[InputItem], Meta(max_length=MAX_MESSAGES)] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    stream: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    include: list[str] | None = None
    tools: Annotated[list[FunctionTool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: Metadata | None = None
    user: str | None = None
    # Extensions named as the engine names them (as chat completions takes them).
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # Fields of hosted features this server has no counterpart for: refused when set (see docs/api.md).
    conversation: Any = None
    prompt: Any = None


responses_request_decoder = msgspec.json.Decoder(ResponsesRequest)

# ---- output items -------------------------------------------------------------------------------------


class TopLogprob(Struct, kw_only=True):
    """An alternative token at a position."""

    token: str
    bytes: list[int]
    logprob: float


class TokenLogprob(Struct, kw_only=True):
    """The chosen token at a position, with alternatives (``include: ["message.output_text.logprobs"]``)."""

    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob]


class OutputText(Struct, kw_only=True, tag="output_text", tag_field="type"):
    """Text the model wrote."""

    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[TokenLogprob] = msgspec.field(default_factory=list)


class InputText(Struct, kw_only=True, tag="input_text", tag_field="type"):
    """Text of an input message, as listed by ``input_items``."""

    text: str


class ReasoningText(Struct, kw_only=True, tag="reasoning_text", tag_field="type"):
    """The model's thinking, as it wrote it."""

    text: str


class SummaryText(Struct, kw_only=True, tag="summary_text", tag_field="type"):
    """A summary of the model's thinking (never written by this server; kept when replayed)."""

    text: str


class MessageItem(Struct, kw_only=True, tag="message", tag_field="type"):
    """A message: the model's (``output_text`` parts) or, in ``input_items``, the caller's (``input_text``)."""

    id: str
    role: str = "assistant"
    status: str = "completed"
    content: list[OutputText | InputText] = msgspec.field(default_factory=list)


class FunctionCallItem(Struct, kw_only=True, tag="function_call", tag_field="type"):
    """A call of a function tool; ``arguments`` is a JSON string."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


class ReasoningItem(Struct, kw_only=True, tag="reasoning", tag_field="type"):
    """The model's thinking before its answer."""

    id: str
    summary: list[SummaryText] = msgspec.field(default_factory=list)
    content: list[ReasoningText] = msgspec.field(default_factory=list)
    status: str = "completed"


class FunctionCallOutputItem(Struct, kw_only=True, tag="function_call_output", tag_field="type"):
    """A function's result, given back by the caller (as listed by ``input_items``)."""

    id: str
    call_id: str
    output: str
    status: str = "completed"


class ToolExecutionError(Struct, kw_only=True, tag="mcp_tool_execution_error", tag_field="type"):
    """Why a call the server ran failed: what the model was told instead of a result."""

    content: str


class ServerToolCallItem(Struct, kw_only=True, tag="mcp_call", tag_field="type"):
    """A call the server ran itself (a host function, an MCP server's tool or a dispatched call), with its
    result: OpenAI's item for tools run on the server's side, which clients show and never run again.
    ``server_label`` says what ran it (``app``, an MCP server's name, ``dispatcher``)."""

    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: ToolExecutionError | None = None
    status: str = "completed"


OutputItem = MessageItem | FunctionCallItem | ReasoningItem | ServerToolCallItem
StoredInputItem = MessageItem | FunctionCallItem | ReasoningItem | FunctionCallOutputItem | ServerToolCallItem

# ---- the response object ----------------------------------------------------------------------------


class InputTokensDetails(Struct, kw_only=True):
    """Prompt tokens read from the prefix cache."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct, kw_only=True):
    """Output tokens spent thinking."""

    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    """Token counts of a response."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(Struct, kw_only=True):
    """Why a response failed."""

    code: str
    message: str


class IncompleteDetails(Struct, kw_only=True):
    """Why a response stopped early: ``max_output_tokens``."""

    reason: str


class FormatOut(Struct, kw_only=True, omit_defaults=True):
    """``text.format`` as the response echoes it."""

    type: str
    name: str | None = None
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextOut(Struct, kw_only=True):
    """``text`` as the response echoes it."""

    format: FormatOut
    verbosity: str = "medium"


class ReasoningOut(Struct, kw_only=True):
    """``reasoning`` as the response echoes it."""

    effort: str | None = None
    summary: str | None = None


class ToolOut(Struct, kw_only=True, tag="function", tag_field="type"):
    """A function tool as the response echoes it."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool | None
    description: str | None = None


class ToolChoiceOut(Struct, kw_only=True, tag="function", tag_field="type"):
    """A forced function, as the response echoes ``tool_choice``."""

    name: str


ResponseStatus = Literal["completed", "incomplete", "failed", "cancelled", "in_progress", "queued"]


class ResponseObject(Struct, kw_only=True):
    """The response object: what ``POST /v1/responses`` creates and ``GET /v1/responses/{id}`` retrieves."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: None = None
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningOut
    service_tier: str = "default"
    store: bool
    temperature: float | None
    text: TextOut
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceOut
    tools: list[ToolOut]
    top_logprobs: int
    top_p: float | None
    truncation: str
    usage: ResponseUsage | None = None
    user: str | None
    metadata: dict[str, str]


class DeletedResponse(Struct, kw_only=True):
    """The answer to ``DELETE /v1/responses/{id}``."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(Struct, kw_only=True):
    """A page of ``GET /v1/responses/{id}/input_items``."""

    object: Literal["list"] = "list"
    data: list[StoredInputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


# ---- streamed events --------------------------------------------------------------------------------


class _Event(Struct, kw_only=True, tag_field="type"):
    sequence_number: int


class _ResponseEvent(_Event):
    """An event that carries the whole response as it stands."""

    response: ResponseObject


class ResponseCreated(_ResponseEvent, tag="response.created"):
    """The first event of every stream."""


class ResponseQueued(_ResponseEvent, tag="response.queued"):
    """A background response waits for its turn."""


class ResponseInProgress(_ResponseEvent, tag="response.in_progress"):
    """Generation started."""


class ResponseCompleted(_ResponseEvent, tag="response.completed"):
    """The response is whole."""


class ResponseIncomplete(_ResponseEvent, tag="response.incomplete"):
    """The response stopped early (``incomplete_details`` says why)."""


class ResponseFailed(_ResponseEvent, tag="response.failed"):
    """The response failed (``error`` says why)."""


class OutputItemAdded(_Event, tag="response.output_item.added"):
    """An output item begins."""

    output_index: int
    item: OutputItem


class OutputItemDone(_Event, tag="response.output_item.done"):
    """An output item is whole."""

    output_index: int
    item: OutputItem


class ContentPartAdded(_Event, tag="response.content_part.added"):
    """A content part of an item begins."""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class ContentPartDone(_Event, tag="response.content_part.done"):
    """A content part is whole."""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class OutputTextDelta(_Event, tag="response.output_text.delta"):
    """More text of a message."""

    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TokenLogprob]


class OutputTextDone(_Event, tag="response.output_text.done"):
    """A message's text, whole."""

    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprob]


class ReasoningTextDelta(_Event, tag="response.reasoning_text.delta"):
    """More of the model's thinking."""

    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(_Event, tag="response.reasoning_text.done"):
    """The model's thinking, whole."""

    item_id: str
    output_index: int
    content_index: int
    text: str


class FunctionCallArgumentsDelta(_Event, tag="response.function_call_arguments.delta"):
    """More of a function call's arguments."""

    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    """A function call's arguments, whole."""

    item_id: str
    output_index: int
    name: str
    arguments: str


class _ServerToolEvent(_Event):
    item_id: str
    output_index: int


class ServerToolArgumentsDelta(_ServerToolEvent, tag="response.mcp_call_arguments.delta"):
    """The arguments of a call the server runs (whole: one delta)."""

    delta: str


class ServerToolArgumentsDone(_ServerToolEvent, tag="response.mcp_call_arguments.done"):
    """The arguments of a call the server runs, whole."""

    arguments: str


class ServerToolInProgress(_ServerToolEvent, tag="response.mcp_call.in_progress"):
    """The server is running the call."""


class ServerToolCompleted(_ServerToolEvent, tag="response.mcp_call.completed"):
    """The call gave a result (the item's ``output``)."""


class ServerToolFailed(_ServerToolEvent, tag="response.mcp_call.failed"):
    """The call failed (the item's ``error`` holds what the model was told)."""


class ErrorEvent(_Event, tag="error"):
    """A failure after the stream started."""

    code: str | None
    message: str
    param: str | None


StreamEvent = (
    ResponseCreated | ResponseQueued | ResponseInProgress | ResponseCompleted | ResponseIncomplete | ResponseFailed
    | OutputItemAdded | OutputItemDone | ContentPartAdded | ContentPartDone | OutputTextDelta | OutputTextDone
    | ReasoningTextDelta | ReasoningTextDone | FunctionCallArgumentsDelta | FunctionCallArgumentsDone
    | ServerToolArgumentsDelta | ServerToolArgumentsDone | ServerToolInProgress | ServerToolCompleted
    | ServerToolFailed | ErrorEvent
)

#: Decodes a stored response object (to change its status on cancel, to replay it).
response_decoder = msgspec.json.Decoder(ResponseObject)
