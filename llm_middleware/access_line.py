"""The access log's one line per event (a request, a tool call) on the ``llm_middleware.access`` logger.

The line is ``key=value`` pairs (values with spaces or quotes are JSON-quoted, missing ones ``-``), which
log shippers parse without configuration; the pairs are also on the record as ``record.access`` (a
dict), for JSON formatters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger("llm_middleware.access")


def enabled() -> bool:
    """Whether lines are written (the logger takes INFO)."""
    return logger.isEnabledFor(logging.INFO)


def milliseconds(seconds: float) -> float:
    """Seconds as milliseconds with one decimal, as the lines write durations."""
    return round(seconds * 1000, 1)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


def write(fields: dict[str, Any]) -> None:
    """Write one line of ``fields``, in their order."""
    logger.info(" ".join(f"{key}={_value(value)}" for key, value in fields.items()), extra={"access": fields})
