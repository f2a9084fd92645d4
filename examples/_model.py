"""The model every example serves: ``$LLM_MODEL``, or the random-weight demo model."""

from __future__ import annotations

import logging
import os

from llm_middleware.demo_model import demo_model_path

logger = logging.getLogger("examples")

SUMMARY_PROMPT = "Summarize the user's text in one sentence."


def model_path() -> str:
    """``$LLM_MODEL`` (a hub id or a local directory); unset, the cached demo model (built on first use)."""
    model = os.environ.get("LLM_MODEL")
    if model:
        return model
    logger.warning("LLM_MODEL is not set: serving the demo model, whose random weights write gibberish")
    return str(demo_model_path())


def summary_messages(text: str) -> list[dict[str, str]]:
    """The chat messages asking the model to summarize ``text``."""
    return [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": text}]
