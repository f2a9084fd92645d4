"""The engine API's calls as upstream requests, run on the remote engine's loop."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.outputs import Completion, Delta, Embeddings
from ..errors import InvalidRequestError
from . import bodies, results
from .errors import UpstreamError
from .models import ServedModel, Task
from .runtime import Runtime

#: Routes :meth:`RemoteEngine.forward` serves, and the task their model must have.
ROUTE_TASKS: dict[str, Task | None] = {
    "chat/completions": "generate",
    "completions": "generate",
    "embeddings": "embed",
    "tokenize": None,
    "detokenize": None,
}


class Generation:
    """A generation call of the engine API as an upstream request: streamed as deltas, or whole.

    Subclasses name the upstream route, build the body, and say how chunks and answers convert.
    """

    __slots__ = ()
    path: ClassVar[str]
    new_deltas: ClassVar[Callable[[], results.ChatDeltas | results.CompletionDeltas]]
    to_completion: ClassVar[Callable[[dict[str, Any], str | None, str], Completion]]
    request_id: str | None

    async def _body(self, runtime: Runtime, *, stream: bool) -> tuple[ServedModel, dict[str, Any]]:
        raise NotImplementedError

    async def deltas(self, runtime: Runtime) -> AsyncGenerator[Delta, None]:
        served, body = await self._body(runtime, stream=True)
        converter = self.new_deltas()
        stream = runtime.dispatcher.stream(self.path, served.upstream_id, body, self.request_id or new_id())
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                for delta in converter.feed(chunk):
                    yield delta

    async def whole(self, runtime: Runtime) -> Completion:
        served, body = await self._body(runtime, stream=False)
        answer = await request(runtime, self.path, served, body, self.request_id or new_id())
        return self.to_completion(answer, self.request_id, served.name)


@dataclass(slots=True)
class ChatCall(Generation):
    """One chat call of the engine API, as an upstream request."""

    path = "chat/completions"
    new_deltas = results.ChatDeltas
    to_completion = staticmethod(results.chat_completion)

    messages: list[dict[str, Any]]
    model: str | None
    tools: list[dict[str, Any]] | None
    template_kwargs: dict[str, Any] | None
    request_id: str | None
    sampling: dict[str, Any]

    async def _body(self, runtime: Runtime, *, stream: bool) -> tuple[ServedModel, dict[str, Any]]:
        fields = bodies.sampling_fields(self.sampling, chat=True)
        served = await runtime.route(self.model, "generate")
        body = bodies.chat_body(self.messages, served.upstream_id, fields, tools=self.tools,
                                chat_template_kwargs=self.template_kwargs, stream=stream)
        return served, body


@dataclass(slots=True)
class CompletionCall(Generation):
    """One text completion call of the engine API, as an upstream request."""

    path = "completions"
    new_deltas = results.CompletionDeltas
    to_completion = staticmethod(results.text_completion)

    prompt: str | list[int]
    model: str | None
    request_id: str | None
    sampling: dict[str, Any]

    async def _body(self, runtime: Runtime, *, stream: bool) -> tuple[ServedModel, dict[str, Any]]:
        fields = bodies.sampling_fields(self.sampling, chat=False)
        served = await runtime.route(self.model, "generate")
        return served, bodies.completion_body(self.prompt, served.upstream_id, fields, stream=stream)


async def embed(runtime: Runtime, inputs: str | list[str], model: str | None, dimensions: int | None) -> Embeddings:
    """An embeddings call of the engine API, as an upstream request."""
    served = await runtime.route(model, "embed")
    body = bodies.embedding_body(inputs, served.upstream_id, dimensions)
    return results.embeddings(await request(runtime, "embeddings", served, body, new_id()), served.name)


async def text_helper(runtime: Runtime, route: str, model: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The upstream's answer to ``POST /tokenize`` or ``/detokenize`` with ``fields``."""
    served = await runtime.route(model, None)
    return await request(runtime, route, served, {"model": served.upstream_id, **fields}, new_id())


async def request(
    runtime: Runtime, route: str, served: ServedModel, body: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """The upstream's JSON answer; a text helper route it does not serve (404, 405) is a clear 400."""
    try:
        return await runtime.dispatcher.request(route, served.upstream_id, body, request_id)
    except UpstreamError as exc:
        if route in ("tokenize", "detokenize") and exc.status in (404, 405):
            raise InvalidRequestError(
                f"{route} is not supported by a remote engine whose upstream does not serve POST /{route} "
                "(vLLM and llm-middleware serve do)",
                code="unsupported",
            ) from exc
        raise


def check_route(route: str) -> str:
    """``route`` if :func:`forward` serves it; else ``ValueError``."""
    if route not in ROUTE_TASKS:
        raise ValueError(f"cannot forward {route!r}; routes: {', '.join(ROUTE_TASKS)}")
    return route


def new_id() -> str:
    """A request id for calls that bring none."""
    return uuid.uuid4().hex


async def forward(runtime: Runtime, route: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A whole OpenAI request for ``route`` sent upstream; the answer's ``model`` is the public name."""
    served = await runtime.route(body.get("model"), ROUTE_TASKS[route])
    answer = await request(runtime, route, served, {**body, "model": served.upstream_id}, request_id)
    if "model" in answer:
        answer["model"] = served.name
    return answer


async def forward_chunks(
    runtime: Runtime, route: str, body: dict[str, Any], request_id: str
) -> AsyncGenerator[dict[str, Any], None]:
    """A streamed OpenAI request for ``route``: the upstream's chunks, their ``model`` the public name."""
    served = await runtime.route(body.get("model"), ROUTE_TASKS[route])
    body = {**body, "model": served.upstream_id}
    async with aclosing(runtime.dispatcher.stream(route, served.upstream_id, body, request_id)) as chunks:
        async for chunk in chunks:
            if "model" in chunk:
                chunk["model"] = served.name
            yield chunk
