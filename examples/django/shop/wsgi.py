"""WSGI entry point (``manage.py runserver``, ``gunicorn shop.wsgi``): Django with the API under ``/ai``."""

import os

from django.core.wsgi import get_wsgi_application

from llm_middleware import LLMMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django_app = get_wsgi_application()

from shop.llm import engine  # noqa: E402  (after Django's setup: it reads the settings)

application = LLMMiddleware(django_app, base_path="/ai", engine=engine)
