"""The lifecycle tests' server: ``hypercorn lifecycle_app:app`` serves the model of ``$LLM_MODEL`` under
``/ai``, its load held at a gate until a test lets it go on, beside host routes that watch and steer it.

Host routes (plain text or JSON, any method):

- ``/work``: a host page that runs a call on the default thread pool (``asyncio.to_thread``).
- ``/state``: the default pool's threads, the loads held at the gate, the requests waiting for a
  load, the engine's state, and the ERROR lines logged by the middleware.
- ``/release``: let every held load go on, and later ones through at once; ``/hold``: hold later loads.
- ``/stop``, ``/start``: ``engine.shutdown()`` and ``engine.start()``, as the host's own code would.
- ``/fail-step``: the next model step raises an error whose text names a local file.

``$REQUEST_TIMEOUT`` is the middleware's ``request_timeout`` (none by default).  At exit the
process writes the engine's state and the loads still held to stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import threading
from typing import Any

import llm_middleware.engine.loading as loading_module
from llm_middleware.middleware import LLMMiddleware

MODEL = os.environ["LLM_MODEL"]
#: What a failing step's exception says: internals that must reach the log, never a client.
STEP_FAULT = f"cannot read {MODEL}/secret-shard.bin"


class LoadGate:
    """Stands in for the engine's ``load``: each load waits at a gate of its own while holding is on."""

    def __init__(self, load: Any) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._holding = True
        self._gates: list[threading.Event] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        gate = threading.Event()
        with self._lock:
            if self._holding:
                self._gates.append(gate)
            else:
                gate.set()
        gate.wait()
        return self._load(*args, **kwargs)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(not gate.is_set() for gate in self._gates)

    def release(self) -> None:
        with self._lock:
            self._holding = False
            for gate in self._gates:
                gate.set()
            self._gates.clear()

    def hold(self) -> None:
        with self._lock:
            self._holding = True


class ErrorLog(logging.Handler):
    """The middleware's ERROR records, with their tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


gate = LoadGate(loading_module.load)
loading_module.load = gate
errors = ErrorLog()
logging.getLogger("llm_middleware").addHandler(errors)


def _worker() -> Any:
    return app.engine._models[app.engine.resolve_model(None)].worker  # noqa: SLF001


def _waiting_for_load() -> int:
    return sum(entry.ready.waiting for entry in app.engine._models.values())  # noqa: SLF001


def _default_pool_threads() -> int:
    return sum(thread.name.startswith("asyncio_") for thread in threading.enumerate())


def _fail_next_step() -> None:
    worker = _worker()

    def fail(batch: Any) -> None:
        worker.before_step = None
        raise RuntimeError(STEP_FAULT)

    worker.before_step = fail


async def host(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body: Any = "ok"
    if path == "/work":
        body = await asyncio.to_thread(lambda: "worked")
    elif path == "/state":
        body = {"pool_threads": _default_pool_threads(), "held_loads": gate.held, "waiting": _waiting_for_load(),
                "engine": app.engine.state, "errors": errors.lines}
    elif path == "/release":
        gate.release()
    elif path == "/hold":
        gate.hold()
    elif path == "/stop":
        await asyncio.to_thread(app.engine.shutdown)
    elif path == "/start":
        app.engine.start()
    elif path == "/fail-step":
        _fail_next_step()
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


timeout = os.environ.get("REQUEST_TIMEOUT")
app = LLMMiddleware(host, base_path="/ai", model=MODEL, request_timeout=float(timeout) if timeout else None)


@atexit.register
def _report() -> None:
    print(f"at exit: engine {app.engine.state}, loads held {gate.held}", file=sys.stderr)
