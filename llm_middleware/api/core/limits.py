"""Caps on what one request body may carry (OpenAI's own where it has one); each is a 400 naming the field.

The lists are capped by the request types, as the body is decoded; free-form JSON values (JSON
Schemas, tool-call arguments) by ``conversation.limits.check_json_depth`` once decoded.  The engine
caps what it checks for every caller (``n``, ``logit_bias``, ``stop``, ``stop_token_ids``,
``chat_template_kwargs``) itself.
"""

from __future__ import annotations

MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256  # per message
MAX_TOOLS = 128  # OpenAI's
MAX_TOOL_CALLS = 128  # per assistant message of the history
MAX_PROMPTS = 128  # per completions request
#: Token ids of one completions prompt, or entries of its list however they read (the engine refuses a
#: prompt longer than the model's context; this bounds what is decoded before it can).
MAX_PROMPT_LIST = 2**20
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's
