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

from ..runtime.cpu_pool import run_cpu
from ..errors import EngineNotReadyError, InvalidRequestError, ModelNotFoundError
from .attention.paged import ATTENTION_NAME
from .text.chat_template import render_chat
from .config import ModelConfig
from .workers.delivery import AsyncSink, ThreadSink
from .workers.embedding import EmbeddingWorker
from .workers.generation import GenerationWorker
from .scheduling.intake import Intake
from .model.loader import LoadCancelledError, ModelLoadError, is_local_path, load
from .outputs import Choice, Completion, Delta, Embeddings, ModelInfo, TokenLogprob, Usage
from .readiness import Readiness
from .sampling.params import SamplingParams

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
    """One served model: where it comes from, how to run it, and its worker once loaded.

    Each start of the engine loads it anew, with a fresh ``ready`` (set when that load ends)
    and ``cancel`` (set when the engine stops, abandoning that load).
    """

    def __init__(self, name: str, source: str, config: ModelConfig) -> None:
        self.name = name
        self.source = source
        self.config = config
        self.worker: Worker | None = None
        self.error: str | None = None
        self.ready = Readiness()
        self.cancel = threading.Event()
        self.created = int(time.time())
        self.random_weights = False

    def new_load(self) -> tuple[_Model, Readiness, threading.Event]:
        """Reset for another load; returns what that load reports to (called holding the engine's lock)."""
        self.error = None
        self.ready = Readiness()
        self.cancel = threading.Event()
        return self, self.ready, self.cancel

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

    Loading starts with :meth:`start` (in the background) or on first use.  After
    :meth:`shutdown` the engine stays stopped (requests raise :class:`EngineNotReadyError`) until
    :meth:`start` is called again.  Every method is thread-safe; the async ones work from any
    event loop, the ``*_sync`` twins from any thread.
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
        self._shut_down = False  # stopped on purpose: only an explicit start() serves again
        self._loaders: list[threading.Thread] = []  # load threads, abandoned ones included, until they end
        if model is not None:
            self.add_model(model, name=name, **options)

    # ---- models -------------------------------------------------------------------------------

    def add_model(self, model: str | os.PathLike[str], *, name: str | None = None, **options: Any) -> str:
        """Serve another model, under ``name`` (default: the hub id or the directory name); returns the name."""
        unknown = sorted(set(options) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_CONFIG_FIELDS))}")
        source = os.fspath(model)
        # A directory's name, not its path: the name is public (listed, and in error messages).
        name = name or (Path(source).expanduser().name if is_local_path(source) else source)
        with self._lock:
            if name in self._models:
                raise ValueError(f"a model named {name!r} is already served; pass another name=")
            entry = _Model(name, source, ModelConfig(**options))
            self._models[name] = entry
            if self._started:
                self._spawn_loader([entry.new_load()], f"llm-load-{name}", after=[])
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
        """``stopped`` before :meth:`start` and after :meth:`shutdown`, else ``loading``, ``ready`` or ``failed``;
        ``stopping`` during shutdown."""
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
        """Begin loading every model in the background (idempotent, returns at once); after
        :meth:`shutdown`, serve again."""
        self._start(on_purpose=True)

    def _start(self, *, on_purpose: bool) -> None:
        """Start unless started; a use (``on_purpose`` False) starts only an engine never shut down.
        While a shutdown runs, a start is ignored and a use refused."""
        with self._lock:
            if self._stopping and not on_purpose:
                raise EngineNotReadyError("the engine is shutting down", retry_after=5)
            if self._started:
                return
            if self._shut_down and not on_purpose:
                raise EngineNotReadyError("the engine is stopped", retry_after=5)
            self._started = True
            self._shut_down = False
            # A load abandoned by a shutdown may still run its last step: two copies of a model
            # must never be held at once, so this start's loads wait for it to end.
            abandoned = [t for t in self._loaders if t.is_alive()]
            self._spawn_loader([entry.new_load() for entry in self._models.values()], "llm-load", after=abandoned)

    def _spawn_loader(self, loads: list[tuple[_Model, Readiness, threading.Event]], name: str, *,
                      after: list[threading.Thread]) -> None:
        """Load ``loads`` in order on a new thread, once the threads ``after`` ended (called holding the lock)."""
        thread = threading.Thread(target=self._load_all, args=(loads, after), name=name, daemon=True)
        self._loaders = [*(t for t in self._loaders if t.is_alive()), thread]
        thread.start()

    def _load_all(self, loads: list[tuple[_Model, Readiness, threading.Event]],
                  after: list[threading.Thread]) -> None:
        for thread in after:
            thread.join()
        for entry, ready, cancel in loads:
            self._load(entry, ready, cancel)

    def _load(self, entry: _Model, ready: Readiness, cancel: threading.Event) -> None:
        began = time.perf_counter()
        try:
            if cancel.is_set():
                return
            loaded = load(
                entry.source, task=entry.config.task, quantize=entry.config.quantize, dtype=entry.config.dtype,
                device=entry.config.device, device_map=entry.config.device_map,
                attn_implementation=ATTENTION_NAME,
                trust_remote_code=entry.config.trust_remote_code, cancel=cancel,
            )
            if cancel.is_set():
                raise LoadCancelledError("the load was abandoned: the engine stopped")
            worker: Worker
            if loaded.task == "embed":
                worker = EmbeddingWorker(entry.name, loaded, entry.config, entry.source)
            else:
                worker = GenerationWorker(entry.name, loaded, entry.config, self._seed, self.intake)
            with self._lock:  # installed only while this load is current: shutdown() cancels under the lock
                if cancel.is_set():
                    raise LoadCancelledError("the load was abandoned: the engine stopped")
                entry.random_weights = loaded.random_weights
                entry.worker = worker
                worker.start()
            _freeze_startup_objects()
            if loaded.random_weights:
                logger.warning("model %s has RANDOM WEIGHTS (a demo model): its output is gibberish", entry.name)
            logger.info("model %s ready in %.1f s", entry.name, time.perf_counter() - began)
        except LoadCancelledError:
            logger.info("model %s: loading abandoned, the engine stopped", entry.name)
            _release_device_memory()
        except (ModelLoadError, InvalidRequestError) as exc:
            self._load_failed(entry, cancel, str(exc))
            logger.error("model %s failed to load: %s", entry.name, exc)
        except Exception as exc:
            self._load_failed(entry, cancel, f"{type(exc).__name__}: {exc}")
            logger.exception("model %s failed to load", entry.name)
        finally:
            ready.set()

    def _load_failed(self, entry: _Model, cancel: threading.Event, error: str) -> None:
        with self._lock:
            if not cancel.is_set():  # an abandoned load's failure is no failure of a later start
                entry.error = error

    def wait_ready_sync(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Block until every model (or ``model``) has loaded, starting the engine on first use; raise
        :class:`EngineNotReadyError` if one failed (:attr:`error` says why), the engine is stopped or
        ``timeout`` seconds passed."""
        entries = self._awaited(model)
        deadline = None if timeout is None else time.monotonic() + timeout
        for entry in entries:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not entry.ready.wait(left):
                raise EngineNotReadyError(f"model {entry.name!r} is still loading", retry_after=5)
        for entry in entries:
            self._loaded_worker(entry)

    async def wait_ready(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Async twin of :meth:`wait_ready_sync`; the wait holds no thread."""
        entries = self._awaited(model)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        for entry in entries:
            try:
                async with asyncio.timeout_at(deadline):
                    await entry.ready.wait_async()
            except TimeoutError:
                raise EngineNotReadyError(f"model {entry.name!r} is still loading", retry_after=5) from None
        for entry in entries:
            self._loaded_worker(entry)

    def _awaited(self, model: str | None) -> list[_Model]:
        entries = [self._models[self.resolve_model(model)]] if model is not None else list(self._models.values())
        self._start(on_purpose=False)
        return entries

    def shutdown(self) -> None:
        """Stop every step loop and free the models (idempotent).  Unfinished requests end with an error.

        A load under way is abandoned at its next step, without waiting for it.  The engine then
        stays stopped until :meth:`start` is called.
        """
        with self._lock:
            self._shut_down = True
            if not self._started or self._stopping:
                return
            self._stopping = True
            workers = []
            for entry in self._models.values():
                entry.cancel.set()
                if entry.worker is not None:
                    workers.append(entry.worker)
                    entry.worker = None
            readies = [entry.ready for entry in self._models.values()]
        for ready in readies:  # requests waiting for a load now see a stopped engine
            ready.set()
        for worker in workers:
            worker.stop()
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
        self._start(on_purpose=False)
        return entry

    def _loaded_worker(self, entry: _Model) -> Worker:
        """``entry``'s worker once its load has ended; clients learn no more than that a load failed."""
        if entry.error is not None:
            raise EngineNotReadyError(f"model {entry.name!r} failed to load; the server's log says why")
        worker = entry.worker
        if worker is None:
            state = "shutting down" if self._stopping else "stopped"
            raise EngineNotReadyError(f"model {entry.name!r} is not loaded: the engine is {state}", retry_after=5)
        return worker

    def _ready_worker(self, entry: _Model, task: Literal["generate", "embed"]) -> Any:
        worker = self._loaded_worker(entry)
        wanted = GenerationWorker if task == "generate" else EmbeddingWorker
        if not isinstance(worker, wanted):
            kind = "text generation" if task == "generate" else "embeddings"
            raise InvalidRequestError(f"model {entry.name!r} does not support {kind}", param="model")
        return worker

    async def _worker(self, model: str | None, task: Literal["generate", "embed"]) -> Any:
        entry = self._entry(model, task)
        await entry.ready.wait_async()
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
        return self._text_worker(model).encode(text)

    def detokenize(self, token_ids: list[int], *, model: str | None = None) -> str:
        """Text of ``token_ids``."""
        worker = self._text_worker(model)
        vocab = worker.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="tokens")
        return worker.tokenizer.decode(token_ids)

    def _text_worker(self, model: str | None) -> Worker:
        entry = self._models[self.resolve_model(model)]
        self._start(on_purpose=False)
        entry.ready.wait()
        return self._loaded_worker(entry)

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
    from .model.loader import detect_task

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
