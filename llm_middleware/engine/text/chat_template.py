"""A conversation rendered with the model's own chat template, taking a caller's variables as plain data only.

``chat_template_kwargs`` become variables of the model's template (``enable_thinking``, ...).  A
name that transformers' renderer takes as a parameter of its own would change what is rendered
instead: ``chat_template`` would run template code of the caller's choosing in our process (an
endless loop, a string multiplied into gigabytes), ``tokenize`` would change what comes back.  So
would a name that replaces a special token the template prints.  Such names are refused with an
error naming them; the renderer's parameters are read from the installed transformers'
signatures, so the list follows its versions.  Values are plain JSON data of bounded size and depth.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from ...errors import InvalidRequestError
from .messages import template_message
from .plain_json import check_plain_json

#: Bounds of ``chat_template_kwargs``: characters of its keys and strings in all, and nesting levels.
MAX_TEMPLATE_KWARGS_SIZE = 16 * 1024
MAX_TEMPLATE_KWARGS_DEPTH = 8

# The conversation's variable in every template: passed by transformers' renderer itself, not a parameter.
_CONVERSATION = "messages"


@lru_cache
def _renderer_parameters(tokenizer_class: type) -> frozenset[str]:
    """Parameter names of ``apply_chat_template`` (as ``tokenizer_class`` has it) and of the Jinja renderer behind it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    names: set[str] = set()
    for function in (tokenizer_class.apply_chat_template, render_jinja_template):
        names |= {
            p.name for p in inspect.signature(function).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
    names.discard("self")
    return frozenset(names)


def reserved_names(tokenizer: Any) -> frozenset[str]:
    """Names that ``chat_template_kwargs`` may not set for ``tokenizer``."""
    special = {*getattr(tokenizer, "SPECIAL_TOKENS_ATTRIBUTES", ()), *getattr(tokenizer, "special_tokens_map", {})}
    return _renderer_parameters(type(tokenizer)) | {_CONVERSATION} | special


def check_template_kwargs(kwargs: Any, reserved: frozenset[str]) -> dict[str, Any]:
    """``kwargs`` if they are plain template variables; :class:`InvalidRequestError` naming the offending key."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise InvalidRequestError("'chat_template_kwargs' must be an object.", param="chat_template_kwargs")
    for name in kwargs:
        if name in reserved:
            raise InvalidRequestError(
                f"'chat_template_kwargs' sets variables of the model's chat template; '{name}' is not one: it would "
                "change how the template is rendered.",
                param=f"chat_template_kwargs.{name}",
            )
    budget = MAX_TEMPLATE_KWARGS_SIZE
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise InvalidRequestError("'chat_template_kwargs' must have string keys only.", param="chat_template_kwargs")
        budget -= len(name) + check_plain_json(
            value, f"chat_template_kwargs.{name}", max_depth=MAX_TEMPLATE_KWARGS_DEPTH - 1, max_size=budget
        )
        if budget < 0:
            raise InvalidRequestError(
                f"'chat_template_kwargs' is larger than {MAX_TEMPLATE_KWARGS_SIZE} characters.",
                param=f"chat_template_kwargs.{name}",
            )
    return kwargs


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                template_kwargs: dict[str, Any] | None, add_generation_prompt: bool = True) -> str:
    """``messages`` (and ``tools``) rendered by ``tokenizer``'s chat template, with ``template_kwargs`` as variables."""
    variables = check_template_kwargs(template_kwargs, reserved_names(tokenizer))
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequestError("this model has no chat template: use the completions API instead", param="messages")
    try:
        return tokenizer.apply_chat_template(
            [template_message(m, i) for i, m in enumerate(messages)], tools=tools or None,
            add_generation_prompt=add_generation_prompt, tokenize=False, **variables,
        )
    except InvalidRequestError:
        raise
    except Exception as exc:  # the template's own checks (role order, missing fields) raise jinja errors
        raise InvalidRequestError(f"the chat template rejected the messages: {exc}", param="messages") from exc

