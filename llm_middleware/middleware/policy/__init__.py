"""What a request under the base path must pass before the API answers it: one concern a module.

The endpoint applies them in order (CORS preflight, authentication, draining, the body limit,
then the deadline around the API's answer).  None of them knows a protocol's error shape:
they raise :class:`~llm_middleware.errors.LLMError` subclasses that the API layer renders.
"""
