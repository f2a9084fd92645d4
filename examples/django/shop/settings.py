"""Settings of the example project: no database, no templates; the model comes from ``$LLM_MODEL``."""

from __future__ import annotations

import os

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# A development key: set DJANGO_SECRET_KEY wherever the project is deployed.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"  # what `manage.py runserver` serves: Django with the API
ASGI_APPLICATION = "shop.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

#: The model the API and the views share: a hub id or a local directory; unset, a small
#: random-weight demo model (built once and cached; it writes gibberish).
LLM_MODEL = os.environ.get("LLM_MODEL")
