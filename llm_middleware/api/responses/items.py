"""Input items -> the chat messages a template renders, and the items as stored and listed.

A conversation is a list of items: what earlier responses were given and wrote (from the store,
through ``previous_response_id``), then this request's ``input``.  Every item keeps an id, so
``input_items`` can list it and page through it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ...engine.text.messages import PART_SEPARATOR, decode_arguments
from ...errors import InvalidRequestError
from ...conversation.limits import check_json_depth
from .types import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputPart,
    InputText,
    MessageItem,
    OutputItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ServerToolCallItem,
    StoredInputItem,
    SummaryText,
    ToolExecutionError,
)

#: Prefixes of the ids this server gives items, by kind (OpenAI's).
ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_",
               "mcp_call": "mcp_"}
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_ASSISTANT_PARTS = frozenset({"output_text", "input_text", "refusal"})

items_decoder = msgspec.json.Decoder(list[InputItem])
items_encoder = msgspec.json.Encoder()


def new_id(prefix: str) -> str:
    """A new item or response id: ``prefix`` and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _text(parts: str | list[InputPart] | None, allowed: frozenset[str], param: str) -> str | None:
    """Content (a string or parts) as one string; parts of a kind not in ``allowed`` are refused."""
    if parts is None or isinstance(parts, str):
        return parts
    texts = []
    for j, part in enumerate(parts):
        if part.type not in allowed:
            raise InvalidRequestError(
                f"Content parts of type '{part.type}' are not supported here; this server takes "
                f"{', '.join(sorted(allowed))}.",
                param=f"{param}[{j}].type",
            )
        text = part.refusal if part.type == "refusal" else part.text
        if text is None:
            raise InvalidRequestError(f"A '{part.type}' part needs its text.", param=f"{param}[{j}]")
        texts.append(text)
    return PART_SEPARATOR.join(texts)


def _required(value: str | None, param: str) -> str:
    if value is None:
        raise InvalidRequestError(f"'{param}' is required for this item.", param=param)
    return value


@dataclass
class Conversation:
    """Items made into chat messages, and the same items in their stored form (each with an id)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    items: list[StoredInputItem] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _calls: dict[str, str] = field(default_factory=dict)  # call_id -> function name
    _reasoning: list[str] = field(default_factory=list)  # thinking waiting for the assistant turn it led to
    _open_assistant: dict[str, Any] | None = None  # the assistant message later calls join
    _results: list[dict[str, Any]] = field(default_factory=list)  # of server calls, after all calls of their turn

    def _item_id(self, given: str | None, kind: str) -> str:
        item_id = given if given and given not in self._ids else new_id(ID_PREFIXES[kind])
        self._ids.add(item_id)
        return item_id

    def _assistant(self, content: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self._reasoning:
            message["reasoning_content"] = PART_SEPARATOR.join(self._reasoning)
            self._reasoning = []
        self.messages.append(message)
        self._open_assistant = message
        return message

    def add(self, item: InputItem, param: str) -> StoredInputItem:
        """Add one item (``param`` names it in errors: ``input[3]``); returns its stored form."""
        kind = item.type or "message"
        if kind == "mcp_call":
            return self._server_call(item, param)
        self.end_server_calls()
        if kind == "message":
            return self._message(item, param)
        if kind == "function_call":
            return self._function_call(item, param)
        if kind == "function_call_output":
            return self._function_output(item, param)
        if kind == "reasoning":
            return self._reasoning_item(item, param)
        raise InvalidRequestError(
            f"Input items of type '{kind}' are not supported; this server takes message, function_call, "
            "function_call_output, reasoning and mcp_call items.",
            param=f"{param}.type",
        )

    def _message(self, item: InputItem, param: str) -> MessageItem:
        role = item.role
        if role not in _ROLES:
            raise InvalidRequestError(
                f"A message's 'role' must be one of user, assistant, system, developer; got {role!r}.",
                param=f"{param}.role",
            )
        assistant = role == "assistant"
        text = _text(item.content, _ASSISTANT_PARTS if assistant else frozenset({"input_text"}), f"{param}.content")
        text = _required(text, f"{param}.content")
        stored = MessageItem(
            id=self._item_id(item.id, "message"),
            role=role,
            content=[OutputText(text=text) if assistant else InputText(text=text)],
        )
        if assistant:
            self._assistant(text)
        else:
            self.messages.append({"role": "system" if role == "developer" else role, "content": text})
            self._open_assistant = None
        self.items.append(stored)
        return stored

    def _call(self, call_id: str, item: InputItem, param: str) -> tuple[str, str]:
        """A call joins the assistant turn it belongs to (a new one after thinking); its name and arguments."""
        name = _required(item.name, f"{param}.name")
        arguments = _required(item.arguments, f"{param}.arguments")
        decoded = decode_arguments(arguments, f"{param}.arguments")
        check_json_depth(decoded, f"{param}.arguments")
        message = self._open_assistant if self._open_assistant is not None and not self._reasoning else None
        if message is None:
            message = self._assistant("")
        message.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": decoded}}
        )
        self._calls[call_id] = name
        return name, arguments

    def _function_call(self, item: InputItem, param: str) -> FunctionCallItem:
        call_id = _required(item.call_id, f"{param}.call_id")
        name, arguments = self._call(call_id, item, param)
        stored = FunctionCallItem(id=self._item_id(item.id, "function_call"), call_id=call_id, name=name,
                                  arguments=arguments)
        self.items.append(stored)
        return stored

    def _function_output(self, item: InputItem, param: str) -> FunctionCallOutputItem:
        call_id = _required(item.call_id, f"{param}.call_id")
        name = self._calls.get(call_id)
        if name is None:
            raise InvalidRequestError(
                f"No function call with call_id '{call_id}' comes before this output.", param=f"{param}.call_id"
            )
        output = _required(_text(item.output, frozenset({"input_text"}), f"{param}.output"), f"{param}.output")
        self.messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": output})
        self._open_assistant = None  # a call after a result belongs to the next assistant turn
        stored = FunctionCallOutputItem(id=self._item_id(item.id, "function_call_output"), call_id=call_id,
                                        output=output)
        self.items.append(stored)
        return stored

    def _server_call(self, item: InputItem, param: str) -> ServerToolCallItem:
        """A call the server ran, replayed: the call joins the assistant turn, its result (or the error the
        model was told) follows once every call of that turn is in, as the tool loop wrote them."""
        item_id = self._item_id(item.id, "mcp_call")
        name, arguments = self._call(item_id, item, param)
        output = _text(item.output, frozenset({"input_text", "output_text"}), f"{param}.output")
        error = item.error
        if isinstance(error, str) or error is None:
            error_text = error
        else:
            error_text = error.message or _text(error.content, frozenset({"input_text", "output_text", "text"}),
                                                f"{param}.error.content")
        if output is None and error_text is None:
            raise InvalidRequestError("An 'mcp_call' item needs its 'output' or its 'error'.", param=f"{param}.output")
        result = output if output is not None else error_text
        self._results.append({"role": "tool", "tool_call_id": item_id, "name": name, "content": result})
        stored = ServerToolCallItem(
            id=item_id, server_label=item.server_label or "app", name=name, arguments=arguments,
            output=output, error=ToolExecutionError(content=error_text) if output is None and error_text else None,
            status="completed" if output is not None else "failed",
        )
        self.items.append(stored)
        return stored

    def end_server_calls(self) -> None:
        """The results of the replayed server calls before, now that their turn's calls are all in."""
        if self._results:
            self.messages += self._results
            self._results = []
            self._open_assistant = None

    def _reasoning_item(self, item: InputItem, param: str) -> ReasoningItem:
        content = item.content if isinstance(item.content, list) else []
        text = _text(content, frozenset({"reasoning_text"}), f"{param}.content") or ""
        summary = _text(item.summary, frozenset({"summary_text"}), f"{param}.summary")
        if text or summary:
            self._reasoning.append(text or summary or "")
        stored = ReasoningItem(
            id=self._item_id(item.id, "reasoning"),
            content=[ReasoningText(text=text)] if text else [],
            summary=[SummaryText(text=part.text or "") for part in item.summary or ()],
        )
        self.items.append(stored)
        return stored


def conversation(history: list[InputItem], input_: str | list[InputItem] | None) -> tuple[Conversation, int]:
    """The conversation of ``history`` (stored items, trusted) then ``input_``; and where the input's items begin."""
    convo = Conversation()
    for k, item in enumerate(history):
        convo.add(item, f"previous_response_id (item {k})")
    start = len(convo.items)
    if isinstance(input_, str):
        convo.add(InputItem(role="user", content=input_), "input")
    else:
        for i, item in enumerate(input_ or ()):
            convo.add(item, f"input[{i}]")
    convo.end_server_calls()
    if not convo.messages:
        raise InvalidRequestError("'input' must hold at least one item.", param="input")
    return convo, start


def as_input(items: list[StoredInputItem] | list[OutputItem]) -> bytes:
    """Stored or output items encoded as input items (what a later response continues from)."""
    return items_encoder.encode(items)
