"""What every engine serves (``Engine`` in process, ``RemoteEngine`` over a fleet), and its blocking twins.

Each operation is written once, async; its ``*_sync`` twin runs that coroutine on a loop thread
shared by every engine of the process and blocks the calling thread (a WSGI view, a script)
until it returns.  Streams are relayed item by item; closing a sync stream cancels its request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from ..runtime.loop_thread import LoopThread
from .delivery import ThreadSink
from .outputs import Completion, Delta, Embeddings, ModelInfo
from .text.reasoning import ReasoningFormat

EngineState = Literal["stopped", "loading", "ready", "failed", "stopping"]
ChatMethod = Callable[..., Awaitable[Completion]]
Task = Literal["generate", "embed"]


def runs_server_tools(chat: ChatMethod) -> ChatMethod:
    """Let an engine's ``chat`` take Python functions (or ``Tool`` objects) as ``tools``: the server-side tool
    loop then runs them and answers, its rounds calling the engine with plain tool descriptions."""

    @functools.wraps(chat)
    async def chat_with_host_tools(self: EngineAPI, messages: list[dict[str, Any]], *,
                                   tools: list[Any] | None = None, **options: Any) -> Completion:
        if tools and any(not isinstance(tool, Mapping) for tool in tools):
            from ..conversation.tool_loop import chat_with_tools  # the loop sits above the engine it drives

            return await chat_with_tools(self, messages, tools, **options)
        return await chat(self, messages, tools=tools, **options)

    return chat_with_host_tools


class EngineAPI(ABC):
    """The engine API: models, lifecycle, text helpers, async generation and embeddings, blocking twins.

    Every method is thread-safe; the async ones work from any event loop, the ``*_sync`` twins
    from any thread but that loop's own.
    """

    #: Where the blocking twins run their coroutines: one loop thread per process, started on first use.
    _sync_loop: ClassVar[LoopThread] = LoopThread("llm-sync-loop")

    # ---- lifecycle ----------------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Begin serving in the background (idempotent, returns at once)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop serving (idempotent); requests in flight end with :class:`EngineNotReadyError`."""

    @property
    @abstractmethod
    def state(self) -> EngineState:
        """``stopped``, ``loading``, ``ready``, ``failed`` or ``stopping``."""

    @property
    @abstractmethod
    def error(self) -> str | None:
        """Why the engine cannot serve (``failed``), or ``None``."""

    @abstractmethod
    async def wait_ready(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Start if needed and wait until every model (or ``model``) can be served; raise
        :class:`EngineNotReadyError` if one cannot or ``timeout`` seconds passed."""

    # ---- models and text helpers --------------------------------------------------------------

    @abstractmethod
    def models(self) -> list[ModelInfo]:
        """Every model served."""

    @abstractmethod
    def resolve_model(self, name: str | None, *, task: Task | None = None) -> str:
        """The served name for ``name``; ``None`` or ``"default"`` mean the first model (of ``task``)."""

    @abstractmethod
    def stats(self, model: str | None = None) -> dict[str, int]:
        """Live counts of a model: ``running``, ``waiting``, ``free_kv_blocks``, ``total_kv_blocks`` and more."""

    @abstractmethod
    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens added for generative models)."""

    @abstractmethod
    def detokenize(self, token_ids: list[int], *, model: str | None = None) -> str:
        """Text of ``token_ids``."""

    @abstractmethod
    def apply_chat_template(self, messages: list[dict[str, Any]], *, model: str | None = None,
                            tools: list[dict[str, Any]] | None = None,
                            chat_template_kwargs: dict[str, Any] | None = None,
                            add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (and ``tools``) with the model's chat template."""

    @abstractmethod
    async def reasoning_format(self, *, model: str | None = None,
                               chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningFormat | None:
        """How the model marks reasoning in a chat reply rendered with ``chat_template_kwargs``, and where
        the reply's output begins; None for a model that does not reason in marked blocks."""

    # ---- generation and embeddings ------------------------------------------------------------

    @abstractmethod
    def stream_chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                    tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                    request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the assistant's reply to ``messages`` (OpenAI-style dicts) as :class:`Delta` objects;
        closing the stream cancels the request."""

    @abstractmethod
    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                   request_id: str | None = None, **sampling: Any) -> Completion:
        """The assistant's whole reply to ``messages``.  ``tools`` are OpenAI-style tool dicts (the reply's
        text holds the model's calls), or Python functions and :class:`~llm_middleware.Tool` objects that the
        server runs in its tool loop (``max_tool_rounds``, ``tool_timeout`` and ``tool_permission`` as for
        the middleware); then the reply is the final answer and usage sums every round."""

    @abstractmethod
    def stream_complete(self, prompt: str | list[int], *, model: str | None = None,
                        request_id: str | None = None, **sampling: Any) -> AsyncIterator[Delta]:
        """Stream the continuation of ``prompt`` (text or token ids) as :class:`Delta` objects;
        closing the stream cancels the request."""

    @abstractmethod
    async def complete(self, prompt: str | list[int], *, model: str | None = None,
                       request_id: str | None = None, **sampling: Any) -> Completion:
        """The whole continuation of ``prompt``."""

    @abstractmethod
    async def embed(self, inputs: str | list[str], *, model: str | None = None,
                    dimensions: int | None = None) -> Embeddings:
        """Embedding vectors of ``inputs``, in input order."""

    # ---- blocking twins -----------------------------------------------------------------------

    def wait_ready_sync(self, timeout: float | None = None, *, model: str | None = None) -> None:
        """Blocking twin of :meth:`wait_ready`."""
        self._sync_loop.run(self.wait_ready(timeout, model=model))

    def reasoning_format_sync(self, *, model: str | None = None,
                              chat_template_kwargs: dict[str, Any] | None = None) -> ReasoningFormat | None:
        """Blocking twin of :meth:`reasoning_format`."""
        return self._sync_loop.run(self.reasoning_format(model=model, chat_template_kwargs=chat_template_kwargs))

    def stream_chat_sync(self, messages: list[dict[str, Any]], *, model: str | None = None,
                         tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                         request_id: str | None = None, **sampling: Any) -> Iterator[Delta]:
        """Blocking twin of :meth:`stream_chat`; closing the iterator cancels the request."""
        return self._relay(self.stream_chat(messages, model=model, tools=tools, chat_template_kwargs=chat_template_kwargs,
                                            request_id=request_id, **sampling))

    def chat_sync(self, messages: list[dict[str, Any]], *, model: str | None = None,
                  tools: list[dict[str, Any]] | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                  request_id: str | None = None, **sampling: Any) -> Completion:
        """Blocking twin of :meth:`chat`."""
        return self._sync_loop.run(self.chat(messages, model=model, tools=tools, chat_template_kwargs=chat_template_kwargs,
                                             request_id=request_id, **sampling))

    def stream_complete_sync(self, prompt: str | list[int], *, model: str | None = None,
                             request_id: str | None = None, **sampling: Any) -> Iterator[Delta]:
        """Blocking twin of :meth:`stream_complete`; closing the iterator cancels the request."""
        return self._relay(self.stream_complete(prompt, model=model, request_id=request_id, **sampling))

    def complete_sync(self, prompt: str | list[int], *, model: str | None = None,
                      request_id: str | None = None, **sampling: Any) -> Completion:
        """Blocking twin of :meth:`complete`."""
        return self._sync_loop.run(self.complete(prompt, model=model, request_id=request_id, **sampling))

    def embed_sync(self, inputs: str | list[str], *, model: str | None = None,
                   dimensions: int | None = None) -> Embeddings:
        """Blocking twin of :meth:`embed`."""
        return self._sync_loop.run(self.embed(inputs, model=model, dimensions=dimensions))

    def _relay(self, deltas: AsyncIterator[Delta]) -> Iterator[Delta]:
        # A thread that reads slower than the engine writes takes the deltas queued for a choice as one.
        return self._sync_loop.relay_sync(deltas, ThreadSink())
