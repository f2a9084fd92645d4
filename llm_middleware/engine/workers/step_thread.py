"""The thread that runs a worker's loop: on the CPU it ends when idle and starts again on demand.

Each thread that runs PyTorch ops on the CPU keeps an OpenMP thread pool of its own.  While
more pool threads exist than cores, OpenMP lets idle threads spin only briefly before they
sleep, so every parallel op then pays a wake-up: an idle model's worker thread slows the busy
ones' steps.  A worker whose thread has ended holds no pool.  No event loop runs here: the loop
is the worker's own step loop.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from ...errors import EngineNotReadyError

#: Seconds without work after which a CPU worker's thread ends.
IDLE_EXIT_S = 1.0


class StepThread:
    """Starts a worker's loop on a thread when there is work; the loop returns when ``wait`` says so.

    ``idle_exit_s`` None keeps the thread until the worker stops (GPU workers).  Every method is
    called holding the worker's condition lock, except ``join``.  The loop is passed to each
    ``ensure_running`` rather than kept: a bound method kept here would tie the worker into a
    reference cycle, and a stopped worker (its KV cache included) would wait for a garbage
    collection that the engine's frozen startup objects never get.
    """

    def __init__(self, name: str, idle_exit_s: float | None) -> None:
        self._name = name
        self.idle_exit_s = idle_exit_s
        self._thread: threading.Thread | None = None

    def ensure_running(self, loop: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=loop, name=self._name, daemon=True)
            self._thread.start()

    def wait(self, wake: threading.Condition, has_work: Callable[[], bool]) -> bool:
        """Wait on ``wake`` until ``has_work()``; False when idle too long: the loop must then return."""
        while not has_work():
            if not wake.wait(self.idle_exit_s) and not has_work():
                self._thread = None  # the next ensure_running starts another
                return False
        return True

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=timeout)


class StepWorker(ABC):
    """What both workers share: the condition that wakes their loop, the stopping flag, and the thread.

    Subclasses write ``_loop``: it waits through ``self._thread.wait(self._wake, ...)`` and returns
    when that says so, or once ``_stopping`` is set and what is left has been failed.
    """

    def __init__(self, thread_name: str, idle_exit_s: float | None) -> None:
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = StepThread(thread_name, idle_exit_s)

    @abstractmethod
    def _loop(self) -> None:
        """The worker's loop, run on its thread."""

    def start(self) -> None:
        with self._wake:
            self._thread.ensure_running(self._loop)

    def stop(self) -> None:
        """Stop the loop; every unfinished request ends with :class:`EngineNotReadyError`."""
        with self._wake:
            self._stopping = True
            self._thread.ensure_running(self._loop)  # an idle loop that had ended fails what is left
            self._wake.notify()
        self._thread.join(timeout=30)

    def _wake_loop(self) -> None:
        """Called holding ``_wake`` after queueing work: run the loop (again, if it ended idle) and wake it."""
        self._thread.ensure_running(self._loop)
        self._wake.notify()

    def _refuse_if_stopping(self) -> None:
        """Called holding ``_wake`` before queueing: checked where ``stop`` sets it, so that nothing is
        queued after the loop's last look at its queues (it would wait there forever)."""
        if self._stopping:
            raise EngineNotReadyError("the engine is shutting down", retry_after=5)
