"""The project's one inference engine, per process: the API under ``/ai`` serves it (``wsgi.py``,
``asgi.py``) and the views call it.  Nothing loads until the first request or lifespan startup."""

from __future__ import annotations

from django.conf import settings

from llm_middleware import Engine, demo_model_path

engine = Engine(settings.LLM_MODEL or demo_model_path())
