"""The public engine: several models, each with its own step loop, behind an async and a sync API."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from ..cpu_pool import run_cpu
from ..errors import EngineNotReadyError, InvalidRequestError, ModelNotFoundError
from . import attention
from .chat_template import render_chat
from .config import ModelConfig
from .delivery import AsyncSink, ThreadSink
from .embedding_worker import EmbeddingWorker
from .generation_worker import GenerationWorker
from .intake import Intake
from .loader import ModelLoadError, load
from .outputs import Choice, Completion, Delta, Embeddings, ModelInfo, TokenLogprob, Usage
from .sampling import SamplingParams

logger = logging.getLogger("llm_middleware")


def _freeze_startup_objects() -> None:
    """Exempt every object alive now (imported libraries, model, tokenizer) from future garbage collections.

    They live as long as the process, yet each full collection walked all of them (hundreds of
    thousands; about 0.2 s with the GIL held), stalling every stream and the event loop at once.
    Garbage is collected first so that none of it is kept.
    """
    gc.collect()
    gc.freeze()

EngineState = Literal["stopped", "loading", "ready", "failed", "stopping"]
Worker = GenerationWorker | EmbeddingWorker
_CONFIG_FIELDS = {f.name for f in fields(ModelConfig)}


class _Model:
    """One served model: where it comes from, how to run it, and its worker once loaded."""

    def __init__(self, name: str, source: str, config: ModelConfig) -> None:
        self.name = name
        self.source = source
        self.config = config
        self.worker: Worker | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.created = int(time.time())
        self.random_weights = False

    @property
    def state(self) -> Literal["loading", "ready", "failed"]:
        if self.error is not None:
            return "failed"
        return "ready" if self.worker is not None else "loading"


class Engine:
    """One shared inference engine: load models once, serve every caller in the process.

    ``model`` is a hub id or a local directory (or ``None`` to add models later with
    :meth:`add_model`).  Options are those of :class:`~llm_middleware.engine.config.ModelConfig`
    (``quantize``, ``dtype``, ``device``, ``max_batch_size``, ``max_waiting``, ``max_model_len`` …);
    ``seed`` seeds the sampling of requests that bring no seed of their own.

    Loading starts with :meth:`start` (in the background) or on first use.  Every method is
    thread-safe; the async ones work from any event loop, the ``*_sync`` twins from any thread.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 seed: int | None = None, **options: Any) -> None:
        self._models: dict[str, _Model] = {}
        self._seed = seed
        #: Requests a server is reading for this engine; an idle worker waits for them (see intake.py).
        self.intake = Intake()
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        if model is not None:
            self.add_model(model, name=name, **options)

    # ---- models -------------------------------------------------------------------------------

    def add_model(self, model: str | os.PathLike[str], *, name: str | None = None, **options: Any) -> str:
        """Serve another model, under ``name`` (default: the hub id or the directory name); returns the name."""
        unknown = sorted(set(options) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_CONFIG_FIELDS))}")
        source = os.fspath(model)
        name = name or (Path(source).name if Path(source).expanduser().exists() else source)
        with self._lock:
            if name in self._models:
                raise ValueError(f"a model named {name!r} is already served; pass another name=")
            entry = _Model(name, source, ModelConfig(**options))
            self._models[name] = entry
            started = self._started
        if started:
            threading.Thread(target=self._load, args=(entry,), name=f"llm-load-{name}", daemon=True).start()
        return name

    def models(self) -> list[ModelInfo]:
        """Every model, loaded or not, in the order they were added."""
        infos = []
        for m in list(self._models.values()):
            worker = m.worker
            infos.append(ModelInfo(
                name=m.name, source=m.source,
                task="embed" if isinstance(worker, EmbeddingWorker) else "generate" if worker else _task_hint(m),
                created=m.created, max_model_len=worker.max_model_len if worker else 0,
                random_weights=m.random_weights, state=m.state, error=m.error,
            ))
        return infos

    def resolve_model(self, name: str | None, *, task: Literal["generate", "embed"] | None = None) -> str:
        """The served name for ``name``; ``None`` or ``"default"`` mean the first model (of ``task``)."""
        if not self._models:
            raise ModelNotFoundError("no model is served: give Engine(model) or call add_model()", param="model")
        if name is None or name == "default":
            candidates = [m for m in self._models.values() if task is None or _task_hint(m) == task]
            return (candidates or list(self._models.values()))[0].name
        if name in self._models:
            return name
        for m in self._models.values():
            if m.source == name:
                return m.name
        available = ", ".join(self._models)
        raise ModelNotFoundError(f"the model {name!r} does not exist; available models: {available}", param="model")

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """``stopped`` before :meth:`start`, then ``loading``, ``ready`` or ``failed``; ``stopping`` during shutdown."""
        if self._stopping:
            return "stopping"
        if not self._started:
            return "stopped"
        states = {m.state for m in self._models.values()}
        if "failed" in states:
            return "failed"
        return "loading" if "loading" in states else "ready"

    @property
    def error(self) -> str | None:
        """Why loading failed (every failed model's reason), or ``None``."""
        errors = [f"{m.name}: {m.error}" for m in self._models.values() if m.error]
        return "; ".join(errors) or None

    def start(self) -> None:
        """Begin loading every model in the background (idempotent, returns at once)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping = False
            pending = list(self._models.values())
        for entry in pending:
            entry.ready.clear()
            entry.error = None
        threading.Thread(target=self._load_all, args=(pending,), name="llm-load", daemon=True).start()

    def _load_all(self, entries: list[_Model]) -> None:
        for entry in entries:
            self._load(entry)

    def _load(self, entry: _Model) -> None:
        began = time.perf_counter()
        try:
            loaded = load(
                entry.source, task=entry.config.task, quantize=entry.config.quantize, dtype=entry.config.dtype,
                device=entry.config.device, device_map=entry.config.device_map,
                attn_implementation=attention.ATTENTION_NAME,
                trust_remote_code=entry.config.trust_remote_code,
            )
            worker: Worker
            if loaded.task == "embed":
                worker = EmbeddingWorker(entry.name, loaded, entry.config, entry.source)
            else:
                worker = GenerationWorker(entry.name, loaded, entry.config, self._seed, self.intake)
            worker.start()
            _freeze_startup_objects()
            entry.random_weights = loaded.random_weights
            entry.worker = worker
            if loaded.random_weights:
                logger.warning("model %s has RANDOM WEIGHTS (a demo model): its output is gibberish", entry.name)
            logger.info("model %s ready in %.1f s", entry.name, time.perf_counter() - began)
        except (ModelLoadError, InvalidRequestError) as exc:
            entry.error = str(exc)
            logger.error("model %s failed to load: %s", entry.name, exc)
        except Exception as exc:
            entry.error = f"{type(exc).__name__}: {exc}"
            logger.exception("model %s failed to load", entry.name)
        finally:
            entry.ready.set()

    def wait_ready_sync(self, timeout: float | None = None) -> None:
        """Start if needed and block until every model is loaded; raise :class:`EngineNotReadyError` if one failed."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for entry in list(self._models.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not entry.ready.wait(left):
                raise EngineNotReadyError(f"model {entry.name!r} is still loading", retry_after=5)
        if self.state == "failed":
            raise EngineNotReadyError(f"a model failed to load: {self.error}")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Async twin of :meth:`wait_ready_sync`."""
        await asyncio.to_thread(self.wait_ready_sync, timeout)

    def shutdown(self) -> None:
        """Stop every step loop and free the models (idempotent).  Unfinished requests end with an error."""
        with self._lock:
            if not self._started:
                return
            self._stopping = True
        for entry in self._models.values():
            entry.ready.wait()
            if entry.worker is not None:
                entry.worker.stop()
                entry.worker = None
        _release_device_memory()
        with self._lock:
            self._started = False
            self._stopping = False

    def stats(self, model: str | None = None) -> dict[str, int]:
        """Live counts of a model's batch: ``running``, ``waiting``, ``free_kv_blocks``, ``total_kv_blocks``;
        and its memory: ``weight_bytes`` (``footprint.weight_bytes``) and ``kv_cache_bytes``."""
        worker = self._models[self.resolve_model(model)].worker
        if worker is None:
            return {"running": 0, "waiting": 0, "free_kv_blocks": 0, "total_kv_blocks": 0, "weight_bytes": 0,
                    "kv_cache_bytes": 0}
        return worker.stats()

    async def check_room(self, sequences: int, *, model: str | None = None) -> None:
        """Raise unless ``sequences`` more sequences fit in the model's queue now, so that a request of several
        prompts is refused whole before any of them is submitted: :class:`EngineOverloadedError`, or
        :class:`InvalidRequestError` when they are more than the queue can ever take."""
        worker = await self._worker(model, "generate")
        worker.check_room(sequences, param="prompt")

    # ---- worker lookup ------------------------------------------------------------------------

    def _entry(self, model: str | None, task: Literal["generate", "embed"]) -> _Model:
        entry = self._models[self.resolve_model(model, task=task)]
        if self._stopping:
            raise EngineNotReadyError("the engine is shutting down", retry_after=5)
        self.start()
        return entry

    @staticmethod
    def _ready_worker(entry: _Model, task: Literal["generate", "embed"]) -> Any:
        if entry.error is not None:
            raise EngineNotReadyError(f"model {entry.name!r} failed to load: {entry.error}")
        worker = entry.worker
        if worker is None:
            raise EngineNotReadyError(f"model {entry.name!r} is not loaded (the engine is stopped)", retry_after=5)
        wanted = GenerationWorker if task == "generate" else EmbeddingWorker
        if not isinstance(worker, wanted):
            kind = "text generation" if task == "generate" else "embeddings"
            raise InvalidRequestError(f"model {entry.name!r} does not support {kind}", param="model")
        return worker

    async def _worker(self, model: str | None, task: Literal["generate", "embed"]) -> Any:
        entry = self._entry(model, task)
        if not entry.ready.is_set():
            await asyncio.to_thread(entry.ready.wait)
        return self._ready_worker(entry, task)

    def _worker_sync(self, model: str | None, task: Literal["generate", "embed"]) -> Any:
        entry = self._entry(model, task)
        entry.ready.wait()
        return self._ready_worker(entry, task)

    # ---- text helpers -------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, Any]], *, model: str | None = None,
                            tools: list[dict[str, Any]] | None = None,
                            chat_template_kwargs: dict[str, Any] | None = None,
                            add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (and ``tools``) with the model's chat template (by default ready for generation)."""
        return render_chat(self._worker_sync(model, "generate").tokenizer, messages, tools, chat_template_kwargs,
                           add_generation_prompt)

    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens added for generative models)."""
        entry = self._models[self.resolve_model(model)]
        self.start()
        entry.ready.wait()
        worker = self._ready_worker(entry, "embed" if isinstance(entry.worker, EmbeddingWorker) else "generate")
        return worker.encode(text)

    def detokenize(self, token_ids: list[int], *, model: str | None = None) -> str:
        """Text of ``token_ids``."""
        entry = self._models[self.resolve_model(model)]
        self.start()
        entry.ready.wait()
        worker = self._ready_worker(entry, "embed" if isinstance(entry.worker, EmbeddingWorker) else "generate")
        vocab = worker.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="tokens")
        return worker.tokenizer.decode(token_ids)

    # ---- generation: async --------------------------------------------------------------------

    async def stream_complete(self, prompt: str | list[int], *, model: str | None = None,
                              request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the continuation of ``prompt`` (text or token ids) as :class:`Delta` objects."""
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        async for delta in self._stream(worker, await run_cpu(_prompt_ids, worker, prompt), params, request_id):
            yield delta

    async def stream_chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                          tools: list[dict[str, Any]] | None = None,
                          chat_template_kwargs: dict[str, Any] | None = None,
                          request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the assistant's reply to ``messages`` (OpenAI-style dicts) as :class:`Delta` objects."""
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        ids = await run_cpu(_chat_ids, worker, messages, tools, chat_template_kwargs)
        async for delta in self._stream(worker, ids, params, request_id):
            yield delta

    async def _stream(self, worker: GenerationWorker, prompt_ids: list[int], params: SamplingParams,
                      request_id: str | None) -> AsyncIterator[Delta]:
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

    async def complete(self, prompt: str | list[int], *, model: str | None = None,
                       request_id: str | None = None, **sampling: Any) -> Completion:
        """The whole continuation of ``prompt``."""
        rid = request_id or _new_id()
        worker = await self._worker(model, "generate")
        ids = await run_cpu(_prompt_ids, worker, prompt)
        stream = self._stream(worker, ids, SamplingParams.from_options(sampling), rid)
        return _collect([d async for d in stream], rid, worker.name, ids)

    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                   request_id: str | None = None, **sampling: Any) -> Completion:
        """The assistant's whole reply to ``messages``."""
        rid = request_id or _new_id()
        params = SamplingParams.from_options(sampling)
        worker = await self._worker(model, "generate")
        ids = await run_cpu(_chat_ids, worker, messages, tools, chat_template_kwargs)
        return _collect([d async for d in self._stream(worker, ids, params, rid)], rid, worker.name, ids)

    async def embed(self, inputs: str | list[str], *, model: str | None = None,
                    dimensions: int | None = None) -> Embeddings:
        """Embedding vectors of ``inputs`` (normalized), in input order."""
        worker = await self._worker(model, "embed")
        sink = AsyncSink(asyncio.get_running_loop())
        worker.submit(_texts(inputs), dimensions, sink)
        return _embeddings(worker.name, await sink.get())

    # ---- generation: sync twins ---------------------------------------------------------------

    def stream_complete_sync(self, prompt: str | list[int], *, model: str | None = None,
                             request_id: str | None = None, **sampling: Any) -> Iterator[Delta]:
        """Blocking twin of :meth:`stream_complete`; closing the iterator cancels the request."""
        params = SamplingParams.from_options(sampling)
        worker = self._worker_sync(model, "generate")
        return self._stream_sync(worker, _prompt_ids(worker, prompt), params, request_id)

    def stream_chat_sync(self, messages: list[dict[str, Any]], *, model: str | None = None,
                         tools: list[dict[str, Any]] | None = None,
                         chat_template_kwargs: dict[str, Any] | None = None,
                         request_id: str | None = None, **sampling: Any) -> Iterator[Delta]:
        """Blocking twin of :meth:`stream_chat`; closing the iterator cancels the request."""
        params = SamplingParams.from_options(sampling)
        worker = self._worker_sync(model, "generate")
        return self._stream_sync(worker, _chat_ids(worker, messages, tools, chat_template_kwargs), params, request_id)

    def _stream_sync(self, worker: GenerationWorker, prompt_ids: list[int], params: SamplingParams,
                     request_id: str | None) -> Iterator[Delta]:
        sink = ThreadSink()
        request = worker.submit(prompt_ids, params, sink, request_id or _new_id())

        def deltas() -> Iterator[Delta]:
            done = False
            try:
                while not done:
                    item = sink.get()
                    if isinstance(item, Exception):
                        done = True
                        raise item
                    done = item.usage is not None
                    yield item
            finally:
                if not done:
                    worker.abort(request)

        return deltas()

    def complete_sync(self, prompt: str | list[int], *, model: str | None = None,
                      request_id: str | None = None, **sampling: Any) -> Completion:
        """Blocking twin of :meth:`complete`."""
        rid = request_id or _new_id()
        worker = self._worker_sync(model, "generate")
        ids = _prompt_ids(worker, prompt)
        stream = self._stream_sync(worker, ids, SamplingParams.from_options(sampling), rid)
        return _collect(list(stream), rid, worker.name, ids)

    def chat_sync(self, messages: list[dict[str, Any]], *, model: str | None = None,
                  tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                  request_id: str | None = None, **sampling: Any) -> Completion:
        """Blocking twin of :meth:`chat`."""
        rid = request_id or _new_id()
        params = SamplingParams.from_options(sampling)
        worker = self._worker_sync(model, "generate")
        ids = _chat_ids(worker, messages, tools, chat_template_kwargs)
        return _collect(list(self._stream_sync(worker, ids, params, rid)), rid, worker.name, ids)

    def embed_sync(self, inputs: str | list[str], *, model: str | None = None,
                   dimensions: int | None = None) -> Embeddings:
        """Blocking twin of :meth:`embed`."""
        worker = self._worker_sync(model, "embed")
        sink = ThreadSink()
        worker.submit(_texts(inputs), dimensions, sink)
        return _embeddings(worker.name, sink.get())


# ---- helpers ------------------------------------------------------------------------------------


def _new_id() -> str:
    return uuid.uuid4().hex


def _task_hint(entry: _Model) -> Literal["generate", "embed"]:
    if entry.worker is not None:
        return "embed" if isinstance(entry.worker, EmbeddingWorker) else "generate"
    if entry.config.task != "auto":
        return entry.config.task
    from .loader import detect_task

    return detect_task(entry.source)


def _prompt_ids(worker: GenerationWorker, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return worker.encode_prompt(prompt)
    vocab = worker.vocab_size
    if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
        raise InvalidRequestError(f"prompt token ids must be integers in 0..{vocab - 1}", param="prompt")
    return list(prompt)


def _texts(inputs: str | list[str]) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError("'input' must be a string or a list of strings", param="input")
    return texts


def _chat_ids(worker: GenerationWorker, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
              template_kwargs: dict[str, Any] | None) -> list[int]:
    return worker.encode_prompt(render_chat(worker.tokenizer, messages, tools, template_kwargs))


def _collect(deltas: list[Delta], request_id: str, model: str, prompt_ids: list[int]) -> Completion:
    texts: dict[int, list[str]] = {}
    ids: dict[int, list[int]] = {}
    logprobs: dict[int, list[TokenLogprob] | None] = {}
    reasons: dict[int, Any] = {}
    usage = Usage(len(prompt_ids), 0)
    for d in deltas:
        texts.setdefault(d.index, []).append(d.text)
        ids.setdefault(d.index, []).extend(d.token_ids)
        if d.logprobs is not None:
            logprobs.setdefault(d.index, []).extend(d.logprobs)  # type: ignore[union-attr]
        if d.finish_reason is not None:
            reasons[d.index] = d.finish_reason
        if d.usage is not None:
            usage = d.usage
    choices = [
        Choice(index=i, text="".join(texts[i]), token_ids=ids[i], finish_reason=reasons[i], logprobs=logprobs.get(i))
        for i in sorted(texts)
    ]
    return Completion(id=request_id, model=model, choices=choices, usage=usage, prompt_token_ids=prompt_ids)


def _embeddings(model: str, item: Any) -> Embeddings:
    if isinstance(item, Exception):
        raise item
    vectors, tokens = item
    return Embeddings(model=model, vectors=vectors, prompt_tokens=tokens)


def _release_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
