"""The example Django project's settings, with ``/stats`` (``step_stats``) beside its own pages."""

from shop.settings import *  # noqa: F403

ROOT_URLCONF = "django_urls"
