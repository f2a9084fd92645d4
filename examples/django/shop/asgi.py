"""ASGI entry point (``hypercorn shop.asgi:application``): Django with the API under ``/ai``."""

import os

from django.core.asgi import get_asgi_application

from llm_middleware import LLMMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django_app = get_asgi_application()

from shop.llm import engine  # noqa: E402  (after Django's setup: it reads the settings)

application = LLMMiddleware(django_app, base_path="/ai", engine=engine)
