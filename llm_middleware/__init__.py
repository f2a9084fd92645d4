"""Give any WSGI or ASGI app its own OpenAI-compatible LLM API under a path prefix."""
