"""Views of the project that call the shared engine: one answer, and one streamed as it is written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.llm import engine

SUMMARY_PROMPT = "Summarize the user's text in one sentence."
STORY_TOKENS = 64


def index(request: HttpRequest) -> HttpResponse:
    """A page of the project, untouched by the middleware."""
    return HttpResponse(
        "<h1>Django shop</h1>"
        '<p>The LLM API lives under <a href="/ai/docs">/ai</a>; try <code>POST /summarize</code> '
        'or <a href="/story?about=a%20lighthouse">/story</a>.</p>'
    )


@csrf_exempt  # a JSON endpoint for scripts, not a form
@require_POST
async def summarize(request: HttpRequest) -> JsonResponse:
    """Summarize ``{"text": ...}``.  An async view: under WSGI Django runs it on an event loop of its own."""
    text = json.loads(request.body or b"{}").get("text", "")
    messages = [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": text}]
    completion = await engine.chat(messages, max_tokens=48)
    return JsonResponse({"summary": completion.choices[0].text})


def _story_messages(request: HttpRequest) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell a short story about {request.GET.get('about', 'a cat')}."}]


async def _story_async(messages: list[dict[str, str]]) -> AsyncIterator[str]:
    async for delta in engine.stream_chat(messages, max_tokens=STORY_TOKENS, temperature=0):
        yield delta.text


def _story_sync(messages: list[dict[str, str]]) -> Iterator[str]:
    deltas = engine.stream_chat_sync(messages, max_tokens=STORY_TOKENS, temperature=0)
    try:
        for delta in deltas:
            yield delta.text
    finally:
        deltas.close()  # the client left (or the story ended): the engine stops writing it


@require_GET
def story(request: HttpRequest) -> StreamingHttpResponse:
    """The model's story about ``?about=``, streamed as plain text while it is written.

    Django buffers a streamed body whose iterator is of the other kind than the server (a sync one
    under ASGI, an async one under WSGI), so the view hands each server the kind it streams.
    """
    messages = _story_messages(request)
    chunks = _story_async(messages) if isinstance(request, ASGIRequest) else _story_sync(messages)
    return StreamingHttpResponse(chunks, content_type="text/plain; charset=utf-8")
