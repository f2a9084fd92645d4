"""A small Django project whose WSGI and ASGI applications carry an OpenAI-compatible API under ``/ai``."""
