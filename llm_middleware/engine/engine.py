"""The public engine: several models, each with its own step loop, behind an async API and its blocking twins."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..errors import EngineNotReadyError, InvalidRequestError
from ..runtime.cpu_pool import run_cpu
from .delivery import AsyncSink
from .interface import EngineAPI, EngineState, Task, runs_server_tools
from .outputs import Completion, Delta, Embeddings, ModelInfo
from .registry import ModelRegistry, ServedModel
from .sampling_params import SamplingParams
from .scheduling.intake import Intake
from .text.chat_template import render_chat
from .text.reasoning import ReasoningFormat
from .workers.generation import GenerationWorker


class Engine(EngineAPI):
    """One shared inference engine: load models once, serve every caller in the process.

    ``model`` is a hub id or a local directory (or ``None`` to add models later with
    :meth:`add_model`).  Options are those of :class:`~llm_middleware.engine.config.ModelConfig`
    (``quantize``, ``dtype``, ``device``, ``max_batch_size``, ``max_waiting``, ``max_model_len`` …);
    ``seed`` seeds the sampling of requests that bring no seed of their own.

    Loading starts with :meth:`start` (in the background) or on first use.  After
    :meth:`shutdown` the engine stays stopped (requests raise :class:`EngineNotReadyError`) until
    :meth:`start` is called again.  Every method is thread-safe; the async ones work from any
    event loop, the ``*_sync`` twins from any thread.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 seed: int | None = None, **options: Any) -> None:
        #: Requests a server is reading for this engine; an idle worker waits for them (``scheduling.intake``).
        self.intake = Intake()
        self._models = ModelRegistry(seed, self.intake)
        if model is not None:
            self.add_model(model, name=name, **options)

    # ---- models -------------------------------------------------------------------------------

    def add_model(self, model: str | os.PathLike[str], *, name: str | None = None, **options: Any) -> str:
        """Serve another model, under ``name`` (default: the hub id or the directory name); returns the name."""
        return self._models.add(model, name, options)

    def models(self) -> list[ModelInfo]:
        """Every model, loaded or not, in the order they were added."""
        return [m.info() for m in self._models.values()]

    def resolve_model(self, name: str | None, *, task: Task | None = None) -> str:
        """The served name for ``name`` (a name or a source); ``None`` or ``"default"`` mean the first model (of ``task``)."""
        return self._models.resolve(name, task)

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """``stopped`` before :meth:`start` and after :meth:`shutdown`, else ``loading``, ``ready`` or ``failed``;
        ``stopping`` during shutdown."""
        return self._models.state

    @property
    def error(self) -> str | None:
        """Why loading failed (every failed model's reason), or ``None``."""
        errors = [f"{m.name}: {m.error}" for m in self._models.values() if m.error]
        return "; ".join(errors) or None

    def start(self) -> None:
        """Begin loading every model in the background (idempotent, returns at once); after
        :meth:`shutdown`, serve again."""
        self._models.start(on_purpose=True)

    def shutdown(self) -> None:
        """Stop every step loop and free the models (idempotent).  Unfinished requests end with an error.

        A load under way is abandoned at its next step, without waiting for it.  The engine then
        stays stopped until :meth:`start` is called.
        """
        self._models.shutdown()

    async def wait_ready(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Wait until every model (or ``model``) has loaded, starting the engine on first use; raise
        :class:`EngineNotReadyError` if one failed (:attr:`error` says why), the engine is stopped or
        ``timeout`` seconds passed.  The wait holds no thread."""
        entries = self._models.awaited(model)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        for entry in entries:
            try:
                async with asyncio.timeout_at(deadline):
                    await entry.ready.wait_async()
            except TimeoutError:
                raise EngineNotReadyError(f"model {entry.name!r} is still loading", retry_after=5) from None
        for entry in entries:
            self._models.loaded_worker(entry)

    def stats(self, model: str | None = None) -> dict[str, int]:
        """Live counts of a model's batch: ``running``, ``waiting``, ``free_kv_blocks`` (cached ones included),
        ``total_kv_blocks``, ``cached_kv_blocks`` (holding a cached prefix, in use or free); the prompt tokens
        of its sequences so far, ``cached_prompt_tokens`` (served from the prefix cache) and
        ``computed_prompt_tokens``; and its memory: ``weight_bytes`` (``model.footprint.weight_bytes``) and
        ``kv_cache_bytes``."""
        worker = self._models[self.resolve_model(model)].worker
        if worker is None:
            return {"running": 0, "waiting": 0, "free_kv_blocks": 0, "total_kv_blocks": 0, "cached_kv_blocks": 0,
                    "cached_prompt_tokens": 0, "computed_prompt_tokens": 0, "weight_bytes": 0, "kv_cache_bytes": 0}
        return worker.stats()

    async def check_room(self, sequences: int, *, model: str | None = None) -> None:
        """Raise unless ``sequences`` more sequences fit in the model's queue now, so that a request of several
        prompts is refused whole before any of them is submitted: :class:`EngineOverloadedError`, or
        :class:`InvalidRequestError` when they are more than the queue can ever take."""
        worker = await self._worker(model, "generate")
        worker.check_room(sequences, param="prompt")

    # ---- text helpers (blocking: they wait for the model's load) ------------------------------

    def apply_chat_template(self, messages: list[dict[str, Any]], *, model: str | None = None,
                            tools: list[dict[str, Any]] | None = None,
                            chat_template_kwargs: dict[str, Any] | None = None,
                            add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (and ``tools``) with the model's chat template (by default ready for generation)."""
        worker = self._worker_blocking(model, "generate")
        return render_chat(worker.tokenizer, messages, tools, chat_template_kwargs, add_generation_prompt)

    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens added for generative models)."""
        return self._worker_blocking(model, None).encode(text)

    def detokenize(self, token_ids: list[int], *, model: str | None = None) -> str:
        """Text of ``token_ids``."""
        worker = self._worker_blocking(model, None)
        vocab = worker.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="tokens")
        return worker.tokenizer.decode(token_ids)

    async def reasoning_format(self, *, model: str | None = None,
                               chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningFormat | None:
        """The model's reasoning markers, from its tokenizer and chat template, and where a reply rendered
        with ``chat_template_kwargs`` begins (``engine.text.reasoning``); None when it has none."""
        worker = await self._worker(model, "generate")
        if worker.text.reasoning_markers is None:
            return None  # nothing to render: no trip to the CPU pool
        return await run_cpu(worker.text.reasoning_format, chat_template_kwargs)

    # ---- generation and embeddings ------------------------------------------------------------

    async def stream_complete(self, prompt: str | list[int], *, model: str | None = None,
                              request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the continuation of ``prompt`` (text or token ids) as :class:`Delta` objects."""
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        async for delta in self._stream(worker, await run_cpu(worker.text.prompt_ids, prompt), params, request_id):
            yield delta

    async def stream_chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                          tools: list[dict[str, Any]] | None = None,
                          chat_template_kwargs: dict[str, Any] | None = None,
                          request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the assistant's reply to ``messages`` (OpenAI-style dicts) as :class:`Delta` objects."""
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        ids = await run_cpu(worker.text.chat_ids, messages, tools, chat_template_kwargs)
        async for delta in self._stream(worker, ids, params, request_id):
            yield delta

    async def complete(self, prompt: str | list[int], *, model: str | None = None,
                       request_id: str | None = None, **sampling: Any) -> Completion:
        """The whole continuation of ``prompt``."""
        worker = await self._worker(model, "generate")
        ids = await run_cpu(worker.text.prompt_ids, prompt)
        return await self._whole(worker, ids, SamplingParams.from_options(sampling), request_id)

    @runs_server_tools
    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                   request_id: str | None = None, **sampling: Any) -> Completion:
        """The assistant's whole reply to ``messages``."""
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        ids = await run_cpu(worker.text.chat_ids, messages, tools, chat_template_kwargs)
        return await self._whole(worker, ids, params, request_id)

    async def embed(self, inputs: str | list[str], *, model: str | None = None,
                    dimensions: int | None = None) -> Embeddings:
        """Embedding vectors of ``inputs`` (normalized), in input order."""
        worker = await self._worker(model, "embed")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError("'input' must be a string or a list of strings", param="input")
        sink = AsyncSink(asyncio.get_running_loop())
        worker.submit(texts, dimensions, sink)
        item = await sink.get()
        if isinstance(item, Exception):
            raise item
        vectors, tokens = item
        return Embeddings(model=worker.name, vectors=vectors, prompt_tokens=tokens)

    async def _stream(self, worker: GenerationWorker, prompt_ids: list[int], params: SamplingParams,
                      request_id: str | None) -> AsyncIterator[Delta]:
        """The one generation stream every call above reads; leaving it early cancels the request."""
        sink = AsyncSink(asyncio.get_running_loop())
        # Checks and grammar compilation on the CPU pool; queued from here, so a caller cancelled
        # meanwhile leaves nothing queued behind.
        request = worker.enqueue(await run_cpu(worker.prepare, prompt_ids, params, sink, request_id or _new_id()))
        done = False
        try:
            while not done:
                item = await sink.get()
                if isinstance(item, Exception):
                    done = True
                    raise item
                done = item.usage is not None
                yield item
        finally:
            if not done:
                worker.abort(request)

    async def _whole(self, worker: GenerationWorker, prompt_ids: list[int], params: SamplingParams,
                     request_id: str | None) -> Completion:
        request_id = request_id or _new_id()
        deltas = [d async for d in self._stream(worker, prompt_ids, params, request_id)]
        return Completion.from_deltas(deltas, request_id, worker.name, prompt_ids)

    # ---- workers ------------------------------------------------------------------------------

    async def _worker(self, model: str | None, task: Task) -> Any:
        entry = self._models.used(model, task)
        await entry.ready.wait_async()
        return self._models.worker_for(entry, task)

    def _worker_blocking(self, model: str | None, task: Task | None) -> Any:
        entry: ServedModel = self._models.used(model, task)
        entry.ready.wait()
        return self._models.worker_for(entry, task) if task is not None else self._models.loaded_worker(entry)


def _new_id() -> str:
    return uuid.uuid4().hex
