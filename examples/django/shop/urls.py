"""The project's own pages; ``/ai/...`` never reaches Django (the middleware answers it)."""

from django.urls import path

from shop import views

urlpatterns = [
    path("", views.index),
    path("summarize", views.summarize),
    path("story", views.story),
]
