"""The engine's models by name, and the loads that bring their workers up and down.

A start loads every model, in the order added, on a thread of its own; a shutdown abandons the
loads under way (each stops at its next step) and stops every worker.  A load abandoned by a
shutdown may still run its last step, so the loads of a later start wait for it to end: two
copies of a model are never held at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from ..errors import EngineNotReadyError, InvalidRequestError, ModelNotFoundError
from .config import ModelConfig
from .interface import EngineState, Task
from .loading import Worker, freeze_startup_objects, load_worker, release_device_memory
from .model.loader import LoadCancelledError, ModelLoadError, detect_task, is_local_path
from .outputs import ModelInfo
from .readiness import Readiness
from .scheduling.intake import Intake
from .workers.embedding import EmbeddingWorker
from .workers.generation import GenerationWorker

logger = logging.getLogger("llm_middleware")

_CONFIG_FIELDS = {f.name for f in fields(ModelConfig)}


class ServedModel:
    """One served model: where it comes from, how to run it, and its worker once loaded.

    Each start loads it anew, with a fresh ``ready`` (set when that load ends) and ``cancel``
    (set when the engine stops, abandoning that load).
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

    def new_load(self) -> tuple[ServedModel, Readiness, threading.Event]:
        """Reset for another load; returns what that load reports to (called holding the registry's lock)."""
        self.error = None
        self.ready = Readiness()
        self.cancel = threading.Event()
        return self, self.ready, self.cancel

    @property
    def state(self) -> Literal["loading", "ready", "failed"]:
        if self.error is not None:
            return "failed"
        return "ready" if self.worker is not None else "loading"

    @property
    def task(self) -> Task:
        """Its task: the worker's once loaded, else the configured or detected one."""
        if self.worker is not None:
            return "embed" if isinstance(self.worker, EmbeddingWorker) else "generate"
        return self.config.task if self.config.task != "auto" else detect_task(self.source)

    def info(self) -> ModelInfo:
        worker = self.worker
        return ModelInfo(name=self.name, source=self.source, task=self.task, created=self.created,
                         max_model_len=worker.max_model_len if worker else 0, random_weights=self.random_weights,
                         state=self.state, error=self.error)


class ModelRegistry:
    """The served models (a mapping by name) and their lifecycle; thread-safe."""

    def __init__(self, seed: int | None, intake: Intake) -> None:
        self._models: dict[str, ServedModel] = {}
        self._seed = seed
        self._intake = intake
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self._shut_down = False  # stopped on purpose: only an explicit start() serves again
        self._loaders: list[threading.Thread] = []  # load threads, abandoned ones included, until they end

    def __getitem__(self, name: str) -> ServedModel:
        return self._models[name]

    def values(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def add(self, model: str | os.PathLike[str], name: str | None, options: dict[str, Any]) -> str:
        unknown = sorted(set(options) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; valid: {', '.join(sorted(_CONFIG_FIELDS))}")
        source = os.fspath(model)
        # A directory's name, not its path: the name is public (listed, and in error messages).
        name = name or (Path(source).expanduser().name if is_local_path(source) else source)
        with self._lock:
            if name in self._models:
                raise ValueError(f"a model named {name!r} is already served; pass another name=")
            entry = ServedModel(name, source, ModelConfig(**options))
            self._models[name] = entry
            if self._started:
                self._spawn_loader([entry.new_load()], f"llm-load-{name}", after=[])
        return name

    def resolve(self, name: str | None, task: Task | None) -> str:
        if not self._models:
            raise ModelNotFoundError("no model is served: give Engine(model) or call add_model()", param="model")
        if name is None or name == "default":
            candidates = [m for m in self._models.values() if task is None or m.task == task]
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
        if self._stopping:
            return "stopping"
        if not self._started:
            return "stopped"
        states = {m.state for m in self._models.values()}
        if "failed" in states:
            return "failed"
        return "loading" if "loading" in states else "ready"

    def start(self, *, on_purpose: bool) -> None:
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
            abandoned = [t for t in self._loaders if t.is_alive()]
            self._spawn_loader([entry.new_load() for entry in self._models.values()], "llm-load", after=abandoned)

    def shutdown(self) -> None:
        """Abandon the loads under way, stop every worker and free the models (idempotent)."""
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
        release_device_memory()
        with self._lock:
            self._started = False
            self._stopping = False

    def _spawn_loader(self, loads: list[tuple[ServedModel, Readiness, threading.Event]], name: str, *,
                      after: list[threading.Thread]) -> None:
        """Load ``loads`` in order on a new thread, once the threads ``after`` ended (called holding the lock)."""
        thread = threading.Thread(target=self._load_all, args=(loads, after), name=name, daemon=True)
        self._loaders = [*(t for t in self._loaders if t.is_alive()), thread]
        thread.start()

    def _load_all(self, loads: list[tuple[ServedModel, Readiness, threading.Event]],
                  after: list[threading.Thread]) -> None:
        for thread in after:
            thread.join()
        for entry, ready, cancel in loads:
            self._load(entry, ready, cancel)

    def _load(self, entry: ServedModel, ready: Readiness, cancel: threading.Event) -> None:
        began = time.perf_counter()
        try:
            if cancel.is_set():
                return
            worker, loaded = load_worker(entry.name, entry.source, entry.config, self._seed, self._intake, cancel)
            with self._lock:  # installed only while this load is current: shutdown() cancels under the lock
                if cancel.is_set():
                    raise LoadCancelledError("the load was abandoned: the engine stopped")
                entry.random_weights = loaded.random_weights
                entry.worker = worker
                worker.start()
            freeze_startup_objects()
            if loaded.random_weights:
                logger.warning("model %s has RANDOM WEIGHTS (a demo model): its output is gibberish", entry.name)
            logger.info("model %s ready in %.1f s", entry.name, time.perf_counter() - began)
        except LoadCancelledError:
            logger.info("model %s: loading abandoned, the engine stopped", entry.name)
            release_device_memory()
        except (ModelLoadError, InvalidRequestError) as exc:
            self._load_failed(entry, cancel, str(exc))
            logger.error("model %s failed to load: %s", entry.name, exc)
        except Exception as exc:
            self._load_failed(entry, cancel, f"{type(exc).__name__}: {exc}")
            logger.exception("model %s failed to load", entry.name)
        finally:
            ready.set()

    def _load_failed(self, entry: ServedModel, cancel: threading.Event, error: str) -> None:
        with self._lock:
            if not cancel.is_set():  # an abandoned load's failure is no failure of a later start
                entry.error = error

    # ---- workers ------------------------------------------------------------------------------

    def used(self, model: str | None, task: Task | None = None) -> ServedModel:
        """The entry ``model`` names, the engine started on first use."""
        entry = self._models[self.resolve(model, task)]
        self.start(on_purpose=False)
        return entry

    def awaited(self, model: str | None) -> list[ServedModel]:
        """What a wait for readiness waits for: ``model``, or every model."""
        entries = [self._models[self.resolve(model, None)]] if model is not None else list(self._models.values())
        self.start(on_purpose=False)
        return entries

    def loaded_worker(self, entry: ServedModel) -> Worker:
        """``entry``'s worker once its load has ended; clients learn no more than that a load failed."""
        if entry.error is not None:
            raise EngineNotReadyError(f"model {entry.name!r} failed to load; the server's log says why")
        worker = entry.worker
        if worker is None:
            state = "shutting down" if self._stopping else "stopped"
            raise EngineNotReadyError(f"model {entry.name!r} is not loaded: the engine is {state}", retry_after=5)
        return worker

    def worker_for(self, entry: ServedModel, task: Task) -> Any:
        """``entry``'s loaded worker, refused unless it serves ``task``."""
        worker = self.loaded_worker(entry)
        wanted = GenerationWorker if task == "generate" else EmbeddingWorker
        if not isinstance(worker, wanted):
            kind = "text generation" if task == "generate" else "embeddings"
            raise InvalidRequestError(f"model {entry.name!r} does not support {kind}", param="model")
        return worker
