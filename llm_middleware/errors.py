"""Errors raised by the engine and turned into OpenAI error bodies by the API.

Each error carries what the HTTP layer needs (status, OpenAI ``type`` and ``code``,
the offending ``param``, and ``retry_after`` where waiting helps), so the engine can
stay free of HTTP while the API maps every failure without a lookup table.
"""

from __future__ import annotations


class LLMError(Exception):
    """Base class of every error the engine or the API reports to a caller."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequestError(LLMError):
    """The caller asked for something malformed or out of range (HTTP 400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt does not fit in the model's context window (HTTP 400)."""

    code = "context_length_exceeded"


class ModelNotFoundError(LLMError):
    """The requested model name is not served by this engine (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class EngineOverloadedError(LLMError):
    """The waiting queue is full; the caller should retry later (HTTP 429)."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class EngineNotReadyError(LLMError):
    """The model is still loading, failed to load, or the engine is shutting down (HTTP 503)."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"


class StoreUnavailableError(LLMError):
    """The response store could not be read or written in time (HTTP 503; the store's own error is logged)."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class EngineStepError(LLMError):
    """A model step failed while this request was in it (HTTP 500)."""

    status = 500
    type = "server_error"
    code = "engine_error"
