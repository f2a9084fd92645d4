"""A Messages request -> the conversation as chat templates take it: OpenAI-style message dicts,
tools, the tool choice, sampling options and the thinking switch.

Anthropic puts tool results in user turns and tool calls in assistant turns as blocks; chat
templates want ``tool`` messages and ``tool_calls``, so blocks are regrouped here, in order.
"""

from __future__ import annotations

from typing import Any

from ...conversation.turn import TEXT, OutputFormat, ToolSpec
from ...engine.text.messages import PART_SEPARATOR
from ...errors import InvalidRequestError
from .types import (
    ContentBlockParam,
    ConversationFields,
    DocumentBlockParam,
    ImageBlockParam,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlockParam,
    ServerToolResultBlockParam,
    ServerToolUseBlockParam,
    TextBlockParam,
    ThinkingAdaptive,
    ThinkingBetweenTools,
    ThinkingBlockParam,
    ThinkingConfig,
    ThinkingEnabled,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)


def _refuse_block(block: ContentBlockParam, param: str) -> None:
    kind = "image" if isinstance(block, ImageBlockParam) else "document"
    raise InvalidRequestError(
        f"Content blocks of type '{kind}' are not supported; this server takes text only.", param=param
    )


def _text(blocks: list[TextBlockParam | ImageBlockParam | DocumentBlockParam], param: str) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, TextBlockParam):
            _refuse_block(block, f"{param}[{j}].type")
        else:
            texts.append(block.text)
    return PART_SEPARATOR.join(texts)


def system_text(system: str | list[TextBlockParam] | None) -> str | None:
    """The system prompt as one string (None when there is none)."""
    if system is None or isinstance(system, str):
        return system
    return PART_SEPARATOR.join(block.text for block in system)


def _user_messages(message: MessageParam, i: int) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``tool`` messages, its text as ``user`` messages, in order."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append({"role": "user", "content": PART_SEPARATOR.join(texts)})
            texts.clear()

    for j, block in enumerate(message.content):
        param = f"messages[{i}].content[{j}]"
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ToolResultBlockParam):
            flush()
            content = block.content
            text = content if isinstance(content, str) else _text(content or [], f"{param}.content")
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, (ImageBlockParam, DocumentBlockParam)):
            _refuse_block(block, f"{param}.type")
        else:
            raise InvalidRequestError(
                f"Content blocks of type '{type(block).__struct_config__.tag}' belong in assistant turns.",
                param=f"{param}.type",
            )
    flush()
    if not out:
        raise InvalidRequestError("A user turn needs at least one content block.", param=f"messages[{i}].content")
    return out


def _system_turn(message: MessageParam, i: int) -> str:
    """A system turn among the messages: its text."""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, block in enumerate(message.content):
        if not isinstance(block, TextBlockParam):
            raise InvalidRequestError("A system turn takes text blocks only.", param=f"messages[{i}].content[{j}].type")
        texts.append(block.text)
    return PART_SEPARATOR.join(texts)


def _assistant_messages(message: MessageParam, i: int) -> list[dict[str, Any]]:
    """An assistant turn: its text as ``content``, its tool uses as ``tool_calls``, its thinking as
    ``reasoning_content`` (which thinking templates render).  Calls the server ran (``mcp_tool_use``)
    join the calls, and their results (``mcp_tool_result``) follow as ``tool`` messages, as the tool
    loop wrote them; what comes after a result is the next assistant message."""
    if isinstance(message.content, str):
        return [{"role": "assistant", "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    names: dict[str, str] = {}

    def flush() -> None:
        assistant: dict[str, Any] = {"role": "assistant", "content": PART_SEPARATOR.join(texts)}
        if calls:
            assistant["tool_calls"] = list(calls)
        if thoughts:
            assistant["reasoning_content"] = PART_SEPARATOR.join(thoughts)
        out.extend([assistant, *results])
        for pieces in (texts, thoughts, calls, results):
            pieces.clear()

    for j, block in enumerate(message.content):
        param = f"messages[{i}].content[{j}]"
        if results and not isinstance(block, ServerToolResultBlockParam):
            flush()
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlockParam | ServerToolUseBlockParam):
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": block.input}})
            names[block.id] = block.name
        elif isinstance(block, ServerToolResultBlockParam):
            content = block.content
            text = content if isinstance(content, str) else _text(list(content or []), f"{param}.content")
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "name": names.get(block.tool_use_id, ""),
                            "content": text})
        elif isinstance(block, ThinkingBlockParam):
            thoughts.append(block.thinking)
        elif isinstance(block, RedactedThinkingBlockParam):
            continue  # withheld by whoever wrote it: nothing the model could read
        elif isinstance(block, (ImageBlockParam, DocumentBlockParam)):
            _refuse_block(block, f"{param}.type")
        else:
            raise InvalidRequestError(
                "Content blocks of type 'tool_result' belong in user turns.", param=f"{param}.type"
            )
    if texts or thoughts or calls or results or not out:
        flush()
    return out


def template_messages(body: ConversationFields) -> list[dict[str, Any]]:
    """The conversation of ``body`` (system prompt first) as chat-template message dicts."""
    if not body.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    out: list[dict[str, Any]] = []
    system = system_text(body.system)
    if system is not None:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        if message.role == "user":
            out += _user_messages(message, i)
        elif message.role == "system":
            out.append({"role": "system", "content": _system_turn(message, i)})
        else:
            out += _assistant_messages(message, i)
    return out


def tools(body: ConversationFields) -> list[ToolSpec]:
    """The request's client tools; server tools are refused (the core checks the schemas)."""
    out = []
    for i, tool in enumerate(body.tools or []):
        if tool.type not in (None, "custom"):
            raise InvalidRequestError(
                f"Tools of type '{tool.type}' run on Anthropic's servers and are not available here; "
                "declare client tools with 'name' and 'input_schema'.",
                param=f"tools[{i}].type",
            )
        if tool.input_schema is None:
            raise InvalidRequestError("A tool needs 'input_schema'.", param=f"tools[{i}].input_schema")
        out.append(ToolSpec(tool.name, tool.description, tool.input_schema, param=f"tools[{i}].input_schema"))
    return out


def tool_choice(choice: ToolChoice | None) -> tuple[str, bool]:
    """``tool_choice`` as the conversation takes it ("auto", "none", "required" or a tool's name), and
    whether several calls are allowed (the core checks that the tools it needs are offered)."""
    if choice is None:
        return "auto", True
    if isinstance(choice, ToolChoiceNone):
        return "none", True
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    if isinstance(choice, ToolChoiceTool):
        return choice.name, False  # a named tool means exactly one call
    return "auto", parallel


def output(body: ConversationFields) -> OutputFormat:
    """What the answer must be: JSON following ``output_config.format.schema``, or free text."""
    config = body.output_config
    if config is None or config.format is None:
        return TEXT
    return OutputFormat("json_schema", schema=config.format.schema, param="output_config.format.schema")


def thinking(config: ThinkingConfig | None) -> bool | None:
    """The chat template's ``enable_thinking`` switch: None leaves the template's default."""
    if config is None or isinstance(config, ThinkingAdaptive | ThinkingBetweenTools):
        return None
    return isinstance(config, ThinkingEnabled)


def sampling(body: MessagesRequest) -> dict[str, Any]:
    """The engine's sampling options (fields left out keep the model's defaults)."""
    options: dict[str, Any] = {"max_tokens": body.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if (value := getattr(body, name)) is not None:
            options[name] = value
    if body.stop_sequences:
        options["stop"] = list(body.stop_sequences)
    return options
