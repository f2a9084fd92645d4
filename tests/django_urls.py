"""The example Django project's pages, and ``/stats`` of its engine."""

from django.http import HttpRequest, JsonResponse
from django.urls import path
from shop.llm import engine
from shop.urls import urlpatterns as shop_urls

from step_stats import Stats

engine_stats = Stats(engine)


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(engine_stats())


urlpatterns = [*shop_urls, path("stats", stats)]
