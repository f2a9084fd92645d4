"""The engine as the API sees it: every call passes through, and generation is measured on the way.

Wrapping the engine keeps measurement out of the API handlers: token counts, time to first
token and inter-token latency are read from the engine's own deltas and usage, recorded in
the :class:`~.metrics.Metrics` and in the current request's :class:`~.exchange.Exchange`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ...api.core.forwarding import AnswerReader, ForwardedAnswer
from .exchange import Exchange, current_exchange
from .metrics import Metrics

if TYPE_CHECKING:
    from ...engine.engine import Engine
    from ...engine.outputs import Completion, Delta, Embeddings, Usage


class ObservedEngine:
    """Delegates everything to ``engine``; measures ``stream_chat``, ``stream_complete``, ``chat``,
    ``complete`` and ``embed``, and an engine's ``forward`` and ``forward_stream`` (whole requests it
    relays), whose answers ``read_forwarded`` reads."""

    def __init__(self, engine: Engine, metrics: Metrics, read_forwarded: AnswerReader) -> None:
        self._engine = engine
        self._metrics = metrics
        self._read = read_forwarded

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._engine, name)  # AttributeError keeps optional capabilities optional
        if name == "forward":
            return self._measured_forward(target)
        if name == "forward_stream":
            return self._measured_forward_stream(target)
        return target

    def _count_answer(self, answer: ForwardedAnswer) -> None:
        """Token counts of a relayed answer or usage chunk."""
        if answer.usage is not None and answer.model is not None:
            self._count(answer.model, answer.usage)

    def _measured_forward(self, forward: Any) -> Any:
        async def measured(route: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            answer = await forward(route, body, **kwargs)
            self._count_answer(self._read(answer))
            return answer

        return measured

    def _measured_forward_stream(self, forward_stream: Any) -> Any:
        async def measured(route: str, body: dict[str, Any], **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
            exchange = current_exchange.get()
            start = exchange.started if exchange is not None else time.perf_counter()
            chunks = forward_stream(route, body, **kwargs)
            seen_token = False
            try:
                async for chunk in chunks:
                    answer = self._read(chunk)
                    if not seen_token and answer.has_output and answer.model is not None:
                        seen_token = True
                        if exchange is not None:
                            exchange.model = answer.model
                        self._first_token(answer.model, exchange, time.perf_counter() - start)
                    self._count_answer(answer)
                    yield chunk
            finally:
                await chunks.aclose()

        return measured

    def _model(self, kwargs: dict[str, Any]) -> str:
        # The API passes the resolved name; resolving again is a dict lookup.
        return self._engine.resolve_model(kwargs.get("model"))

    def _count(self, model: str, usage: Usage) -> None:
        self._metrics.count_tokens(model, usage.prompt_tokens, usage.completion_tokens)
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.model = model
            exchange.prompt_tokens += usage.prompt_tokens
            exchange.cached_tokens += usage.cached_tokens
            exchange.completion_tokens += usage.completion_tokens

    async def _measured(self, model: str, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.model = model
        start = exchange.started if exchange is not None else time.perf_counter()
        last: dict[int, float] = {}  # choice index -> when its previous tokens arrived
        try:
            async for delta in deltas:
                now = time.perf_counter()
                if delta.token_ids:
                    if not last:
                        self._first_token(model, exchange, now - start)
                    elif delta.index in last:
                        self._metrics.observe_inter_token(model, (now - last[delta.index]) / len(delta.token_ids))
                    last[delta.index] = now
                if delta.usage is not None:
                    self._count(model, delta.usage)
                yield delta
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]

    def _first_token(self, model: str, exchange: Exchange | None, seconds: float) -> None:
        self._metrics.observe_ttft(model, seconds)
        if exchange is not None and exchange.ttft is None:
            exchange.ttft = seconds

    def stream_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> AsyncIterator[Delta]:
        """:meth:`Engine.stream_chat`, measured."""
        return self._measured(self._model(kwargs), self._engine.stream_chat(messages, **kwargs))

    def stream_complete(self, prompt: str | list[int], **kwargs: Any) -> AsyncIterator[Delta]:
        """:meth:`Engine.stream_complete`, measured."""
        return self._measured(self._model(kwargs), self._engine.stream_complete(prompt, **kwargs))

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        """:meth:`Engine.chat`, with its token counts recorded."""
        completion = await self._engine.chat(messages, **kwargs)
        self._count(completion.model, completion.usage)
        return completion

    async def complete(self, prompt: str | list[int], **kwargs: Any) -> Completion:
        """:meth:`Engine.complete`, with its token counts recorded."""
        completion = await self._engine.complete(prompt, **kwargs)
        self._count(completion.model, completion.usage)
        return completion

    async def embed(self, inputs: str | list[str], **kwargs: Any) -> Embeddings:
        """:meth:`Engine.embed`, with its token count recorded."""
        embeddings = await self._engine.embed(inputs, **kwargs)
        self._metrics.count_tokens(embeddings.model, embeddings.prompt_tokens, 0)
        exchange = current_exchange.get()
        if exchange is not None:
            exchange.model = embeddings.model
            exchange.prompt_tokens += embeddings.prompt_tokens
        return embeddings
