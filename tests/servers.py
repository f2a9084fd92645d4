"""Real servers on loopback for the tests: each in its own subprocess on a free port, all started together.

A server is the command after ``python`` (``-m hypercorn module:app``, ``-m flask --app ... run``, ...);
:func:`launch` adds the port the way each command takes it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

# `python -m <module> ... --port N`: the CLIs that take the port as an option.
_PORT_OPTION_MODULES = frozenset({"flask", "quart", "litestar", "llm_middleware.cli", "uvicorn"})
# `python -m <module> ... --bind 127.0.0.1:N`: the servers that take an address.
_BIND_OPTION_MODULES = frozenset({"hypercorn", "gunicorn"})


@dataclass(frozen=True)
class Server:
    """How to start one server: the command after ``python``, extra environment variables, and the
    path that answers 200 once the server is up (the API's health by default)."""

    args: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/ai/health"


def server_env(model_dir: Path) -> dict[str, str]:
    """The environment of every test server: ``LLM_MODEL``, and imports of the examples and ``tests/server_apps``."""
    return {**os.environ, "LLM_MODEL": str(model_dir), "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], port: int, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``python *args`` serving on 127.0.0.1:``port``; stderr is kept for the failure message."""
    if args[0] == "-m" and args[1] in _BIND_OPTION_MODULES:
        args = [*args, "--bind", f"127.0.0.1:{port}"]
    elif args[0] == "-m" and args[1] in _PORT_OPTION_MODULES:
        args = [*args, "--port", str(port)]
    else:
        args = [*args, str(port)]
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_until_up(url: str, process: subprocess.Popen[bytes], path: str = "/ai/health", timeout: float = 120) -> None:
    """Return once ``url + path`` answers 200; raise with the server's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready")


@contextmanager
def serving(servers: Mapping[str, Server], env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Start every server at once, wait until all are up, and yield their base URLs by name.

    On exit each gets SIGINT (a graceful stop), and is killed if it has not exited 15 s later.
    """
    processes: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    try:
        for name, server in servers.items():
            port = free_port()
            process = launch(server.args, port, {**env, **server.env})
            processes[name] = (process, f"http://127.0.0.1:{port}", server.ready_path)
        for process, url, ready_path in processes.values():
            wait_until_up(url, process, ready_path)
        yield {name: url for name, (_, url, _) in processes.items()}
    finally:
        for process, _, _ in processes.values():
            process.send_signal(signal.SIGINT)
        for process, _, _ in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
