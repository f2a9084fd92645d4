"""The step loop of one generative model: a thread that batches every running request."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import torch

from ...errors import EngineNotReadyError, EngineOverloadedError, EngineStepError, InvalidRequestError
from ..config import ModelConfig
from ..delivery import AsyncSink, Outbox
from ..model.loader import LoadedModel
from ..model.setup import prepare
from ..outputs import Delta, Usage
from ..sampling.grammar import GrammarCompiler
from ..sampling.sampler import Sampler, SampleResult
from ..sampling_params import SamplingParams
from ..scheduling import prefix_hash
from ..scheduling.block_manager import BlockManager
from ..scheduling.burst import BurstPolicy
from ..scheduling.intake import Intake
from ..scheduling.request import GenerationRequest
from ..scheduling.scheduler import ScheduledBatch, Scheduler
from ..scheduling.sequence import PENDING_TOKEN, Sequence, SequenceStatus
from ..text.codec import TextCodec
from .assembly import OutputAssembler
from .pipelining import LaunchedStep, Pipelining
from .requests import RequestFactory
from .step_thread import IDLE_EXIT_S, StepWorker

logger = logging.getLogger("llm_middleware")


class GenerationWorker(StepWorker):
    """Owns one model's KV cache, scheduler and step-loop thread.

    ``prepare``, ``enqueue``, ``abort``, ``check_room`` and ``stats`` are thread-safe; everything
    else runs on the worker's thread.
    """

    def __init__(self, name: str, loaded: LoadedModel, config: ModelConfig, seed: int | None,
                 intake: Intake | None = None) -> None:
        serving = prepare(loaded, config)
        props = serving.props
        # Sampling happens where the logits are: the output layer's device.
        self.device = props.output_device
        super().__init__(f"llm-engine-{name}", IDLE_EXIT_S if self.device.type == "cpu" else None)
        self.name = name
        self.intake = intake or Intake()
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = config
        self.max_model_len = props.max_model_len
        self.eos_ids = props.eos_ids
        self.defaults = props.defaults
        self.weight_bytes = serving.weight_bytes
        self.kv_cache = serving.kv_cache
        self.runner = serving.runner
        self.text = TextCodec(self.tokenizer, self.max_model_len)
        self.vocab_size = self.text.vocab_size
        self.blocks = BlockManager(self.kv_cache.num_blocks, config.block_size, caching=config.prefix_caching)
        self.scheduler = Scheduler(
            self.blocks, max_batch_size=config.max_batch_size,
            max_prefill_tokens=config.max_prefill_tokens or _default_prefill_tokens(loaded.device),
        )
        self.burst = BurstPolicy(config.burst_window_ms, self.intake, self.scheduler.max_prefill_tokens)
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        self.sampler = Sampler(generator)
        grammars = GrammarCompiler(self.tokenizer, props.logits_width, self.eos_ids)
        # Each worker caches its own model's blocks; the chain's root names the model all the same.
        prefix_root = prefix_hash.root(name.encode()) if config.prefix_caching else None
        self.requests = RequestFactory(props, self.text.token_decoder, grammars, config.block_size, prefix_root)
        self.assembler = OutputAssembler(self.text)
        # Overlap pays only where the device runs asynchronously: by default where a CUDA decoder runs.
        overlap = config.async_scheduling if config.async_scheduling is not None else self.runner.decoder is not None
        self.pipelining = Pipelining(overlap, prompts=self.device.type == "cuda")

        self._inbox: deque[GenerationRequest] = deque()
        self._aborts: deque[GenerationRequest] = deque()
        self._active: set[GenerationRequest] = set()
        #: Set by tests and fault injection: called with the scheduled batch before each model step.
        self.before_step: Any = None

    # ---- thread-safe API ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.text.encode(text)

    def check_room(self, sequences: int, *, param: str = "n") -> None:
        """Raise unless ``sequences`` more sequences may wait now: :class:`EngineOverloadedError`, or
        :class:`InvalidRequestError` naming ``param`` when they are more than the queue can ever take."""
        limit = self.config.max_waiting + self.config.max_batch_size
        if sequences > limit:
            raise InvalidRequestError(
                f"this request adds {sequences} sequences (n per prompt), more than model {self.name!r} queues "
                f"at once ({limit}); send fewer prompts or a smaller n",
                param=param,
            )
        waiting = sum(len(r.seqs) for r in list(self._inbox)) + len(self.scheduler.waiting)
        # Sequences that will find a free batch slot do not wait: only the rest count.
        free_slots = max(0, self.config.max_batch_size - len(self.scheduler.running))
        if waiting + sequences - free_slots > self.config.max_waiting:
            raise EngineOverloadedError(
                f"model {self.name!r} has {waiting} sequences waiting (max_waiting={self.config.max_waiting}); "
                "retry later",
                retry_after=1,
            )

    def prepare(self, prompt_ids: list[int], params: SamplingParams, sink: AsyncSink,
                request_id: str) -> GenerationRequest:
        """Check a request and build what its steps use, without queueing it; raises at once for a context
        too long or a queue full.  Request-sized CPU work: callers on an event loop run it on the CPU pool."""
        self.requests.check(prompt_ids, params)
        self.check_room(params.n)
        return self.requests.build(prompt_ids, params, sink, request_id)

    def enqueue(self, request: GenerationRequest) -> GenerationRequest:
        """Queue a request made by :meth:`prepare`; raises at once: queue full, engine stopping."""
        self.check_room(len(request.seqs))
        with self._wake:
            self._refuse_if_stopping()
            self._inbox.append(request)
            self._wake_loop()
        Intake.submitted()
        return request

    def abort(self, request: GenerationRequest) -> None:
        """Cancel ``request``: it leaves the batch at the next step and its KV blocks are freed."""
        with self._wake:
            self._aborts.append(request)
            self._wake_loop()

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self._inbox) + len(self.scheduler.waiting),
            "free_kv_blocks": self.blocks.num_free,
            "total_kv_blocks": self.blocks.num_blocks,
            "cached_kv_blocks": self.blocks.num_cached,
            "cached_prompt_tokens": self.blocks.cached_prompt_tokens,
            "computed_prompt_tokens": self.blocks.computed_prompt_tokens,
            "weight_bytes": self.weight_bytes,
            "kv_cache_bytes": self.kv_cache.nbytes,
        }

    # ---- the step loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        outbox = Outbox()
        pending: LaunchedStep | None = None  # launched, its draws not read yet
        while True:
            with self._wake:
                if not self._thread.wait(self._wake, lambda: bool(self._stopping or self._inbox or self._aborts
                                                                   or self.scheduler.has_work or pending)):
                    return  # idle: the thread ends until the next request
                if self._inbox and not self.scheduler.has_work and pending is None:
                    self.burst.gather(self._inbox, self._wake, lambda: self._stopping)
                if self._stopping:
                    break
                incoming = list(self._inbox)
                self._inbox.clear()
                aborts = list(self._aborts)
                self._aborts.clear()
            for request in incoming:
                self._active.add(request)
                for seq in request.seqs:
                    self.scheduler.add(seq)
            for request in aborts:
                self._drop(request)
            batch = self.scheduler.schedule(admit=self.burst.admits_prompts(self.scheduler.waiting, pending is not None))
            if batch.prefill and logger.isEnabledFor(logging.DEBUG):  # how bursts are chunked, for TTFT
                logger.debug("step: %d decode rows and %d prompts (%d prompt tokens); %d waiting, %d being read",
                             len(batch.decode), len(batch.prefill), sum(n for _, n in batch.prefill),
                             len(self.scheduler.waiting), self.intake.pending)
            if pending is not None and not self.pipelining.may_launch_ahead(batch):
                self._finish(pending, outbox)
                outbox.flush()  # before the next launch, which may be a long prompt chunk
                pending = None
                batch.discard_finished()
            launched = self._launch(batch, pending, outbox) if batch else None
            # While the device computes the step just launched, the host reads and delivers the one before.
            if pending is not None:
                self._finish(pending, outbox)
            pending = launched
            if pending is not None and not self.pipelining.enabled:
                self._finish(pending, outbox)
                pending = None
            outbox.flush()
        if pending is not None:  # its draws are made: deliver them, as a step read at once would have been
            self._finish(pending, outbox)
            outbox.flush()
        self._fail_all(EngineNotReadyError("the engine shut down before this request finished", retry_after=5))

    def _launch(self, batch: ScheduledBatch, previous: LaunchedStep | None, outbox: Outbox) -> LaunchedStep | None:
        """Queue the model step and the draws of ``batch``; each drawn sequence gets a pending token."""
        try:
            if self.before_step is not None:
                self.before_step(batch)
            if previous is None:
                logits, sampled = self.runner.step(batch)
            else:
                logits, sampled = self.runner.step(batch, previous.draws.tokens, previous.rows)
            self.scheduler.launched(batch)
            if logits is None:
                return None
            draws = self.sampler.sample(logits, sampled)
            positions = []
            for seq in sampled:
                positions.append(len(seq.token_ids))
                seq.token_ids.append(PENDING_TOKEN)
            return LaunchedStep(sampled, positions, draws)
        except Exception as exc:
            self._fail_step(exc, {seq.request for seq in (*batch.decode, *(s for s, _ in batch.prefill))}, outbox)
            return None

    def _finish(self, launched: LaunchedStep, outbox: Outbox) -> None:
        """Read a launched step's draws and deliver them."""
        try:
            self._deliver(launched, launched.draws.fetch(), outbox)
        except Exception as exc:
            self._fail_step(exc, {seq.request for seq in launched.seqs}, outbox)

    def _deliver(self, launched: LaunchedStep, result: SampleResult, outbox: Outbox) -> None:
        for row, (seq, pos) in enumerate(zip(launched.seqs, launched.positions)):
            if seq.status is SequenceStatus.FINISHED:
                continue  # finished at an earlier step while this one ran, or cancelled
            self.assembler.accept(seq, pos, result, row)
            delta = self.assembler.delta(seq)
            if delta is None:
                continue
            if seq.finish_reason is not None:
                self._finished(seq, delta)
            outbox.put(seq.request.sink, delta)

    def _finished(self, seq: Sequence, delta: Delta) -> None:
        """``seq`` ended with ``delta``: its blocks are freed; the request's last choice adds the usage."""
        self.scheduler.remove(seq)
        request = seq.request
        request.num_finished += 1
        if request.finished:
            # The prompt is counted once, as its first choice found it (the others share its blocks).
            delta.usage = Usage(len(request.prompt_ids), sum(s.num_output_tokens for s in request.seqs),
                                request.seqs[0].num_cached_tokens or 0)
            self._active.discard(request)

    def _fail_step(self, exc: Exception, requests: set[GenerationRequest], outbox: Outbox) -> None:
        failed = [request for request in requests if request in self._active]
        logger.error("model step failed; failing requests %s", ", ".join(sorted(r.request_id for r in failed)),
                     exc_info=exc)
        for request in failed:
            # The exception's text may hold paths and internals: it stays in the log.
            outbox.put(request.sink, EngineStepError(
                f"The model failed while generating this response (request {request.request_id}); "
                "the server's log has the details."
            ))
            self._drop(request)

    def _drop(self, request: GenerationRequest) -> None:
        for seq in request.seqs:
            if seq.finish_reason is None:
                self.scheduler.remove(seq)
        self._active.discard(request)

    def _fail_all(self, error: Exception) -> None:
        outbox = Outbox()
        for request in list(self._active) + list(self._inbox):
            outbox.put(request.sink, error)
            self._drop(request)
        outbox.flush()


def _default_prefill_tokens(device: torch.device) -> int:
    """A GPU prompt chunk costs tens of milliseconds of host time whatever its size, so chunks there are
    large; a CPU computes 512 tokens in about the time of one GPU chunk."""
    return 4096 if device.type == "cuda" else 512
