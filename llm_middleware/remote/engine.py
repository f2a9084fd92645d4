"""``RemoteEngine``: the engine API, served by a fleet of OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from ..engine.interface import EngineAPI, EngineState, runs_server_tools
from ..engine.outputs import Completion, Delta, Embeddings, ModelInfo
from ..engine.text.reasoning import ReasoningFormat
from ..errors import EngineNotReadyError, InvalidRequestError
from ..markers import THINK_END, THINK_START
from ..runtime.loop_thread import LoopThread
from . import calls
from .models import ServedModel, Task
from .runtime import Runtime, Settings
from .upstream import UpstreamStatus


class RemoteEngine(EngineAPI):
    """The engine API over existing OpenAI-compatible servers (vLLM, SGLang, TGI, mistral.rs,
    ``llm-middleware serve``): ``LLMMiddleware(app, engine=RemoteEngine([...]))`` serves the same
    routes as with an embedded engine, and your views call the same methods.

    Requests go to the least busy upstream serving their model.  A request moves to another
    upstream only where it cannot have run (no connection; a 429, 503, 401 or 403 answer); any
    other failure ends that request alone (502, or 504 for a timeout) and leaves the upstream in
    rotation, which health checks decide.  Every method is thread-safe; async ones work from any loop.

    Args:
        upstreams: Base URLs of the servers, up to their ``/v1`` (``http://gpu-1:8000/v1``).
        api_key: Sent as ``Authorization: Bearer ...`` to every upstream.
        model_map: Public model name -> upstream model id; clients see and send the public names.
        timeout: Longest wait, in seconds, for an upstream's next bytes: for a whole (not streamed)
            answer that is the whole generation; for a stream, the longest pause between chunks.
            Past it the request fails with :class:`~llm_middleware.remote.UpstreamTimeoutError` (504) and
            the upstream stays in rotation.
        connect_timeout: Longest wait to connect to an upstream; also bounds each health check.
        health_interval: Seconds between two health checks (``GET {upstream}/models``) of every upstream.
        http2: Use HTTP/2 where an upstream offers it (negotiated over TLS); needs the ``h2`` extra.
    """

    def __init__(
        self,
        upstreams: Sequence[str] | str,
        *,
        api_key: str | None = None,
        model_map: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        health_interval: float = 5.0,
        http2: bool = False,
    ) -> None:
        self._settings = Settings.checked(upstreams, api_key=api_key, model_map=model_map, timeout=timeout,
                                           connect_timeout=connect_timeout, health_interval=health_interval, http2=http2)
        self._loop = LoopThread("llm-remote-engine", start_on_use=False)
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._pid: int | None = None
        self._stopping = False

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the health checks in the background (idempotent, returns at once)."""
        with self._lock:
            if self._runtime is not None and self._pid == os.getpid():
                return
            self._loop.open()
            self._runtime = self._loop.run(Runtime.open(self._settings))
            self._pid = os.getpid()

    def shutdown(self) -> None:
        """Stop the health checks and close every connection (idempotent).

        Requests in flight end with :class:`EngineNotReadyError`; a later :meth:`start` starts afresh.
        """
        with self._lock:
            runtime = self._runtime
            if runtime is None or self._pid != os.getpid():
                return
            self._stopping = True
        try:
            self._loop.run(self._close(runtime))
            self._loop.close()
        finally:
            with self._lock:
                self._runtime = None
                self._stopping = False

    async def _close(self, runtime: Runtime) -> None:
        await self._loop.cancel_all("the remote engine is shutting down")
        await runtime.close()

    @property
    def state(self) -> EngineState:
        """``stopped``; ``loading`` until every upstream was checked once; ``ready`` while one is in
        rotation, ``failed`` while none is (it recovers when a health check passes); ``stopping``."""
        if self._stopping:
            return "stopping"
        runtime = self._current()
        if runtime is None:
            return "stopped"
        if not runtime.checker.discovered.is_set():
            return "loading"
        return "ready" if any(u.healthy for u in runtime.pool.upstreams) else "failed"

    @property
    def error(self) -> str | None:
        """Why upstreams are out of rotation (each one's reason), or ``None``."""
        runtime = self._current()
        return (runtime.down_reasons() or None) if runtime is not None else None

    async def wait_ready(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Start if needed and wait until every upstream was checked once; raise :class:`EngineNotReadyError`
        if none is in rotation then (and :class:`ModelNotFoundError` if none serves ``model``).  The wait
        holds no thread."""
        await self._loop.call(self._checked(self._started(), timeout))
        if model is not None:
            self.resolve_model(model)

    async def _checked(self, runtime: Runtime, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(runtime.checker.discovered.wait(), timeout)
        except TimeoutError:
            raise EngineNotReadyError(
                "the upstreams have not answered their first health check yet", retry_after=1
            ) from None
        if self.state == "failed":
            raise EngineNotReadyError(
                f"no upstream is in rotation: {self.error}", retry_after=self._settings.health_interval
            )

    def _current(self) -> Runtime | None:
        return self._runtime if self._pid == os.getpid() else None

    def _started(self) -> Runtime:
        self.start()
        runtime = self._current()
        if runtime is None:  # shut down by another thread in between
            raise EngineNotReadyError("the remote engine is shutting down", retry_after=5)
        return runtime

    # ---- models -------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model the upstreams serve (the union of their ``/models``), under its public name."""
        runtime = self._current()
        return [model.info() for model in runtime.models()] if runtime is not None else []

    def resolve_model(self, name: str | None, *, task: Task | None = None) -> str:
        """The public name for ``name``; ``None`` or ``"default"`` mean the first model (of ``task``)."""
        return self._served(name, task).name

    def _served(self, name: str | None, task: Task | None) -> ServedModel:
        runtime = self._current()
        if runtime is None or not runtime.checker.discovered.is_set():
            raise EngineNotReadyError(
                "the remote engine has not asked its upstreams for their models yet", retry_after=1
            )
        return runtime.served(name, task)

    def upstreams(self) -> list[UpstreamStatus]:
        """Each upstream's URL, whether it is in rotation (or why not), its outstanding and total
        requests, and the upstream model ids it serves."""
        runtime = self._current()
        if runtime is None:
            return [UpstreamStatus(url, False, 0, 0, "not started", []) for url in self._settings.urls]
        return runtime.pool.statuses()

    def stats(self, model: str | None = None) -> dict[str, int]:
        """Live counts of a model, with the counts of :meth:`Engine.stats`: ``running`` (its requests in
        flight upstream); ``waiting``, ``free_kv_blocks`` and ``total_kv_blocks`` are 0 (queues and KV
        caches live upstream, and so do the weights: no memory figures); plus ``upstreams`` serving it and
        how many are ``healthy_upstreams``."""
        served = self._served(model, None)
        runtime = self._current()
        return {
            "running": runtime.dispatcher.running[served.upstream_id] if runtime is not None else 0,
            "waiting": 0,
            "free_kv_blocks": 0,
            "total_kv_blocks": 0,
            "upstreams": len(served.upstreams),
            "healthy_upstreams": sum(u.healthy for u in served.upstreams),
        }

    # ---- forwarding whole OpenAI requests (what the API uses) ---------------------------------

    async def forward(self, route: str, body: dict[str, Any], *, request_id: str) -> dict[str, Any]:
        """Send an OpenAI request ``body`` for ``route`` (``chat/completions``, ``completions``,
        ``embeddings``, ``tokenize``, ``detokenize``) to an upstream and return its answer, whose
        ``model`` is the public name.  Errors are :class:`~llm_middleware.errors.LLMError` instances."""
        runtime = self._started()
        return await self._loop.call(calls.forward(runtime, calls.check_route(route), body, request_id))

    def forward_stream(
        self, route: str, body: dict[str, Any], *, request_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Like :meth:`forward` for ``stream: true``: the upstream's chunks as they come, ``model``
        renamed; errors before the first chunk are raised by the first ``__anext__``."""
        runtime = self._started()
        return self._loop.relay(calls.forward_chunks(runtime, calls.check_route(route), body, request_id))

    # ---- text helpers -------------------------------------------------------------------------

    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens added), from an upstream's ``POST /tokenize``."""
        fields = {"prompt": text, "add_special_tokens": False}
        answer = self._loop.run(calls.text_helper(self._started(), "tokenize", model, fields))
        return list(answer["tokens"])

    def detokenize(self, token_ids: list[int], *, model: str | None = None) -> str:
        """Text of ``token_ids``, from an upstream's ``POST /detokenize``."""
        answer = self._loop.run(calls.text_helper(self._started(), "detokenize", model, {"tokens": list(token_ids)}))
        return str(answer["prompt"])

    def apply_chat_template(self, messages: list[dict[str, Any]], *, model: str | None = None,
                            tools: list[dict[str, Any]] | None = None,
                            chat_template_kwargs: dict[str, Any] | None = None,
                            add_generation_prompt: bool = True) -> str:
        """Not available: chat templates live on the upstreams, which do not hand out rendered prompts."""
        raise InvalidRequestError(
            "apply_chat_template is not supported by a remote engine: the chat template lives on the upstream "
            "servers (POST /tokenize with 'messages' tokenizes a conversation there)",
            param="messages",
        )

    async def reasoning_format(self, *, model: str | None = None,
                               chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningFormat | None:
        """Upstreams split reasoning from the answer themselves (vLLM's reasoning parsers) and constrain
        the answer only; their ``reasoning_content`` comes back as a ``<think>`` block that opens the
        reply (``remote.results``), as does the reasoning of an upstream that leaves it in the text."""
        return ReasoningFormat(THINK_START, THINK_END, "either", marker_tokens=False, grammar_sees_reasoning=False)

    # ---- generation and embeddings --------------------------------------------------------------------

    def stream_chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                    tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                    request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the assistant's reply to ``messages`` as :class:`Delta` objects; closing it cancels upstream."""
        call = calls.ChatCall(messages, model, tools, chat_template_kwargs, request_id, sampling)
        return self._loop.relay(call.deltas(self._started()))

    @runs_server_tools
    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                   request_id: str | None = None, **sampling: Any) -> Completion:
        """The assistant's whole reply to ``messages``."""
        call = calls.ChatCall(messages, model, tools, chat_template_kwargs, request_id, sampling)
        return await self._loop.call(call.whole(self._started()))

    def stream_complete(self, prompt: str | list[int], *, model: str | None = None,
                        request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the continuation of ``prompt`` (text or token ids) as :class:`Delta` objects."""
        return self._loop.relay(calls.CompletionCall(prompt, model, request_id, sampling).deltas(self._started()))

    async def complete(self, prompt: str | list[int], *, model: str | None = None,
                       request_id: str | None = None, **sampling: Any) -> Completion:
        """The whole continuation of ``prompt``."""
        return await self._loop.call(calls.CompletionCall(prompt, model, request_id, sampling).whole(self._started()))

    async def embed(self, inputs: str | list[str], *, model: str | None = None,
                    dimensions: int | None = None) -> Embeddings:
        """Embedding vectors of ``inputs``, in input order."""
        return await self._loop.call(calls.embed(self._started(), inputs, model, dimensions))
