"""The step loop of one generative model: a thread that batches every running request."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import torch

from ...errors import (
    ContextLengthExceededError,
    EngineNotReadyError,
    EngineOverloadedError,
    EngineStepError,
    InvalidRequestError,
)
from ..model.attention_features import read_variants
from ..scheduling.block_manager import BlockManager
from ..config import ModelConfig
from .delivery import Outbox, Sink
from ..text.detokenizer import IncrementalDetokenizer, TokenDecoder
from ..model.footprint import weight_bytes
from ..patching.fused_layers import fuse_layers
from ..patching.fused_norms import fuse_rms_norms
from ..patching.fused_residuals import fuse_residuals
from ..sampling.grammar import GrammarCompiler
from ..scheduling.intake import Intake
from ..attention.kv_cache import KVCache
from ..model.loader import LoadedModel
from ..model.cuda_decoder import CudaDecoder
from ..model.runner import ModelRunner
from ..patching.row_linear import use_row_kernel
from ..outputs import Delta, TokenLogprob, TopLogprob, Usage
from ..scheduling.request import GenerationRequest
from ..sampling.sampler import Draws, SampleResult, Sampler, logit_bias_tensors, token_tensor
from ..sampling.params import SamplingParams
from ..scheduling.scheduler import ScheduledBatch, Scheduler
from .step_thread import IDLE_EXIT_S, StepThread
from ..text.token_bytes import TokenBytes
from ..scheduling.sequence import PENDING_TOKEN, Sequence, SequenceStatus

logger = logging.getLogger("llm_middleware")

# Sampling fields a model's generation config may set defaults for.
_DEFAULTABLE = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class _Launched:
    """A step queued on the device: its drawn sequences, where each draw goes in ``token_ids``, the draws."""

    __slots__ = ("seqs", "positions", "draws", "_rows")

    def __init__(self, seqs: list[Sequence], positions: list[int], draws: Draws) -> None:
        self.seqs = seqs
        self.positions = positions
        self.draws = draws
        self._rows: dict[int, int] | None = None

    @property
    def rows(self) -> dict[int, int]:
        """Each sequence's row in ``draws`` (by ``seq_id``)."""
        if self._rows is None:
            self._rows = {seq.seq_id: row for row, seq in enumerate(self.seqs)}
        return self._rows


class GenerationWorker:
    """Owns one model's KV cache, scheduler and step-loop thread.

    ``submit`` and ``abort`` are thread-safe; everything else runs on the worker's thread.
    """

    def __init__(self, name: str, loaded: LoadedModel, config: ModelConfig, seed: int | None,
                 intake: Intake | None = None) -> None:
        self.name = name
        self.intake = intake or Intake()
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = config
        # len() of a large tokenizer rebuilds its vocabulary (milliseconds): once, not per request.
        self.vocab_size = len(self.tokenizer)
        # No token covers more characters of a text than its longest vocabulary entry has.
        self.max_token_chars = max(map(len, self.tokenizer.get_vocab()), default=1) or 1
        hf_config = self.model.config
        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        context = getattr(text_config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(context, config.max_model_len or context)
        gen = self.model.generation_config
        self.eos_ids = sorted(self._eos_ids(gen))
        self.defaults = self._sampling_defaults(gen)
        self.pad_id = next(
            (i for i in (getattr(gen, "pad_token_id", None), self.tokenizer.pad_token_id, *self.eos_ids) if i is not None), 0
        )

        layer_devices = self._layer_devices(text_config.num_hidden_layers, loaded.device)
        # Before anything is swapped: the model's own attention modules say what they need (or refuse it).
        variants = read_variants(self.model)
        # Before the cache is sized: merging projections copies one layer's weights at a time.
        fuse_rms_norms(self.model)
        fuse_layers(self.model, variants)
        fuse_residuals(self.model)
        use_row_kernel(self.model)
        self.weight_bytes = weight_bytes(self.model)
        num_blocks = self._num_kv_blocks(text_config, layer_devices)
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        self.kv_cache = KVCache(
            num_layers=text_config.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=config.block_size,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=self._activation_dtype(),
            devices=layer_devices,
        )
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(
            self.blocks, max_batch_size=config.max_batch_size,
            max_prefill_tokens=config.max_prefill_tokens or self._default_prefill_tokens(loaded.device),
        )
        decoder = None
        if loaded.device.type == "cuda" and len(set(layer_devices)) == 1:  # graphs need one device
            decoder = CudaDecoder(self.model, self.kv_cache, max_batch_size=config.max_batch_size,
                                  max_model_len=self.max_model_len, pad_id=self.pad_id, use_graphs=config.cuda_graphs,
                                  compile_model=config.compile)
        self.runner = ModelRunner(self.model, self.kv_cache, self.pad_id, decoder)
        if loaded.device.type == "cpu" and (rows := self.runner.use_cpu_decoder(config.max_batch_size)):
            logger.info("CPU decode steps of up to %d rows run as one call", rows)
        # Sampling happens where the logits are: the output layer's device.
        self.device = self.model.get_output_embeddings().weight.device
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self.sampler = Sampler(self.generator)
        self.token_bytes = TokenBytes(self.tokenizer)
        self.token_decoder = TokenDecoder(self.tokenizer)
        self.logits_width = self.model.get_output_embeddings().weight.shape[0]
        self.grammars = GrammarCompiler(self.tokenizer, self.logits_width, self.eos_ids)

        self._inbox: deque[GenerationRequest] = deque()
        self._aborts: deque[GenerationRequest] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._active: set[GenerationRequest] = set()
        # Overlap: launch step N+1 from step N's draws on the device before the host reads them.
        # Only a device that runs asynchronously gains; on the CPU the model runs on this thread.
        self.overlap = config.async_scheduling if config.async_scheduling is not None else decoder is not None
        # Prompt chunks too, where the device runs them asynchronously: the host queues the next
        # chunk while the device computes the last one.  On the CPU the model runs on this thread,
        # and a chunk queued first would hold back the pending step's first tokens.
        self.overlap_prompts = self.overlap and self.device.type == "cuda"
        self._held_since: float | None = None  # since when waiting prompts wait for the rest of a burst
        self._thread = StepThread(f"llm-engine-{name}", IDLE_EXIT_S if self.device.type == "cpu" else None)
        #: Set by tests and fault injection: called with the scheduled batch before each model step.
        self.before_step: Any = None

    # ---- configuration read from the model -------------------------------------------------

    def _eos_ids(self, gen: Any) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    @staticmethod
    def _sampling_defaults(gen: Any) -> dict[str, Any]:
        explicit = gen.to_diff_dict() if hasattr(gen, "to_diff_dict") else {}
        if not explicit.get("do_sample", False):
            return {"temperature": 0.0}
        defaults = {k: explicit[k] for k in _DEFAULTABLE if explicit.get(k) is not None}
        defaults.setdefault("temperature", 1.0)
        return defaults

    @staticmethod
    def _default_prefill_tokens(device: torch.device) -> int:
        """A GPU prompt chunk costs tens of milliseconds of host time whatever its size, so chunks
        there are large; a CPU computes 512 tokens in about the time of one GPU chunk."""
        return 4096 if device.type == "cuda" else 512

    def _activation_dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
        return torch.float32

    def _layer_devices(self, num_layers: int, default: torch.device) -> list[torch.device]:
        """The device of each decoder layer (one device unless loaded with a ``device_map``)."""
        devices = [default] * num_layers
        for module in self.model.modules():
            layer = getattr(module, "layer_idx", None)
            weight = getattr(getattr(module, "k_proj", None), "weight", None)
            if isinstance(layer, int) and weight is not None and 0 <= layer < num_layers:
                devices[layer] = weight.device
        return devices

    def _num_kv_blocks(self, text_config: Any, devices: list[torch.device]) -> int:
        cfg = self.config
        if cfg.kv_cache_blocks is not None:
            blocks = cfg.kv_cache_blocks
        else:
            head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
            per_token = KVCache.bytes_per_token(
                num_layers=1,
                num_kv_heads=getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads,
                head_dim=head_dim,
                dtype=self._activation_dtype(),
            )
            # per_token is one layer's share: each device holds the blocks of its own layers.
            if devices[0].type == "cuda":
                blocks = min(
                    int(torch.cuda.mem_get_info(d)[0] * cfg.kv_cache_memory_fraction)
                    // (per_token * devices.count(d) * cfg.block_size)
                    for d in set(devices)
                )
            else:
                wanted = cfg.max_batch_size * self.max_model_len * per_token * len(devices)
                budget = min(wanted, cfg.cpu_kv_cache_bytes)
                blocks = budget // (per_token * len(devices) * cfg.block_size)
        minimum = -(-self.max_model_len // cfg.block_size)
        if blocks < minimum:
            logger.warning(
                "KV cache of %d blocks cannot hold one full context of %d tokens; using %d blocks",
                blocks, self.max_model_len, minimum,
            )
            blocks = minimum
        return blocks

    # ---- thread-safe API ----------------------------------------------------------------------

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

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt; one too long for the context is refused, the longest ones before tokenizing
        (tokenizing megabytes takes seconds)."""
        if len(text) > self.max_model_len * self.max_token_chars:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens, but the prompt has "
                f"{len(text)} characters, more than that many tokens can hold; shorten the prompt or the conversation",
                param="messages",
            )
        return self.encode(text)

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

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str) -> GenerationRequest:
        """Queue a request, or raise at once: context too long, queue full, engine stopping."""
        return self.enqueue(self.prepare(prompt_ids, params, sink, request_id))

    def prepare(self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str) -> GenerationRequest:
        """Check a request and build what its steps use (grammar matchers, bias tensors, stop sets), without
        queueing it; raises at once for a context too long or a queue full.  Request-sized CPU work: callers on
        an event loop run it on the CPU pool."""
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty: it must contain at least one token", param="prompt")
        if len(prompt_ids) >= self.max_model_len:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens, but the prompt has "
                f"{len(prompt_ids)} tokens; shorten the prompt or the conversation",
                param="messages",
            )
        if params.max_tokens is not None and (asked := len(prompt_ids) + params.max_tokens) > self.max_model_len:
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens, but {asked} were requested "
                f"({len(prompt_ids)} in the prompt, max_tokens {params.max_tokens} for the answer); "
                "ask for fewer tokens or shorten the prompt",
                param="max_tokens",
            )
        self.check_room(params.n)
        params = params.with_defaults(self.defaults)
        matcher = self.grammars.compile(params.guided) if params.guided is not None else None
        room = self.max_model_len - len(prompt_ids)
        request = GenerationRequest(request_id, prompt_ids, params, sink)
        request.stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else frozenset(self.eos_ids))
        request.bias = logit_bias_tensors(params.logit_bias, self.logits_width)
        if params.min_tokens:
            request.min_tokens_ban = token_tensor([*self.eos_ids, *params.stop_token_ids], self.logits_width)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed((params.seed + index) % 2**64)  # choice i of n: its own stream
            detok = IncrementalDetokenizer(self.token_decoder, prompt_ids, params.stop)
            max_total = len(prompt_ids) + min(room, params.max_tokens or room)
            seq_matcher = matcher.deep_copy() if matcher is not None else None
            request.seqs.append(Sequence(request, index, prompt_ids, params, generator, detok, max_total, seq_matcher))
            request.pending_ids.append([])
            request.pending_logprobs.append([])
        return request

    def enqueue(self, request: GenerationRequest) -> GenerationRequest:
        """Queue a request made by :meth:`prepare`; raises at once: queue full, engine stopping."""
        self.check_room(len(request.seqs))
        with self._wake:
            # Checked where stop() sets it: a request queued after the loop's last look at the
            # inbox would wait there forever.
            if self._stopping:
                raise EngineNotReadyError("the engine is shutting down", retry_after=5)
            self._inbox.append(request)
            self._thread.ensure_running(self._loop)
            self._wake.notify()
        Intake.submitted()
        return request

    def abort(self, request: GenerationRequest) -> None:
        """Cancel ``request``: it leaves the batch at the next step and its KV blocks are freed."""
        with self._wake:
            self._aborts.append(request)
            self._thread.ensure_running(self._loop)
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self._inbox) + len(self.scheduler.waiting),
            "free_kv_blocks": self.blocks.num_free,
            "total_kv_blocks": self.blocks.num_blocks,
            "weight_bytes": self.weight_bytes,
            "kv_cache_bytes": self.kv_cache.nbytes,
        }

    # ---- the step loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        outbox = Outbox()
        pending: _Launched | None = None  # launched, its draws not read yet
        while True:
            with self._wake:
                if not self._thread.wait(self._wake, lambda: bool(self._stopping or self._inbox or self._aborts
                                                                   or self.scheduler.has_work or pending)):
                    return  # idle: the thread ends until the next request
                if self._inbox and not self.scheduler.has_work and pending is None:
                    self._gather_burst()
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
            batch = self.scheduler.schedule(admit=self._admits_prompts(pending is not None))
            if batch.prefill and logger.isEnabledFor(logging.DEBUG):  # how bursts are chunked, for TTFT
                logger.debug("step: %d decode rows and %d prompts (%d prompt tokens); %d waiting, %d being read",
                             len(batch.decode), len(batch.prefill), sum(n for _, n in batch.prefill),
                             len(self.scheduler.waiting), self.intake.pending)
            if pending is not None and not self._may_overlap(batch):
                self._finish(pending, outbox)
                outbox.flush()  # before the next launch, which may be a long prompt chunk
                pending = None
                batch.discard_finished()
            launched = self._launch(batch, pending, outbox) if batch else None
            # While the device computes the step just launched, the host reads and delivers the one before.
            if pending is not None:
                self._finish(pending, outbox)
            pending = launched
            if pending is not None and not self.overlap:
                self._finish(pending, outbox)
                pending = None
            outbox.flush()
        if pending is not None:  # its draws are made: deliver them, as a step read at once would have been
            self._finish(pending, outbox)
            outbox.flush()
        self._fail_all(EngineNotReadyError("the engine shut down before this request finished", retry_after=5))

    def _gather_burst(self) -> None:
        """Called idle, holding ``_wake``, with requests in the inbox: wait while more keep arriving.

        Requests sent together reach the inbox one by one as the event loop reads them.  A prompt
        chunk started with the first few costs the same host time as a full one and holds the
        GIL that the intake of the rest needs, so a burst would be prefilled in many small
        chunks.  The wait goes on while each arrival comes within ``burst_window_ms`` of the
        last or the server is still reading requests (``intake``), up to 25 windows in all or
        until the inbox fills a prompt chunk.
        """
        window = self.config.burst_window_ms / 1000
        began = time.monotonic()
        deadline = began + 25 * window
        seen = len(self._inbox)
        while not self._stopping:
            tokens = sum(len(r.prompt_ids) * len(r.seqs) for r in self._inbox)
            remaining = deadline - time.monotonic()
            if tokens >= self.scheduler.max_prefill_tokens or remaining <= 0:
                break
            self._wake.wait(min(window, remaining))
            if len(self._inbox) == seen and not self.intake.pending:  # none came, none on its way
                break
            seen = len(self._inbox)
        logger.debug("burst: %d requests after %.1f ms", len(self._inbox), (time.monotonic() - began) * 1000)

    def _admits_prompts(self, in_flight: bool) -> bool:
        """Whether the next step may start waiting prompts; ``in_flight``: a launched step is still computing.

        The rest of a burst reaches the inbox while the first prompt chunk computes.  Started as
        they come, a few at a time, the late prompts would each take a step of their own, queued
        one behind the other: eager forwards whose launches cost the host about as much time
        however few their prompts.  So while a step is in flight and the server is still reading
        requests (``intake``), prompts that fill less than a chunk wait, for at most 25
        ``burst_window_ms``: the running sequences decode meanwhile, and the device is busy with
        the step in flight anyway.
        """
        waiting = self.scheduler.waiting
        if not (in_flight and waiting and self.intake.pending) or (
                sum(seq.num_uncomputed for seq in waiting) >= self.scheduler.max_prefill_tokens):
            self._held_since = None
            return True
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since >= 25 * self.config.burst_window_ms / 1000

    def _may_overlap(self, batch: ScheduledBatch) -> bool:
        """Whether ``batch`` may be launched before the host reads the pending step's draws.

        Grammars and penalties read the tokens on the host, and so do prompt chunks: a chunk may
        go ahead only where none of its tokens is still a pending draw (a preempted sequence's
        recomputation could hold one).
        """
        if not (self.overlap and batch and all(s.pipelined for s in batch.decode)):
            return False
        return not batch.prefill or self.overlap_prompts and all(
            PENDING_TOKEN not in seq.token_ids[seq.num_computed : seq.num_computed + n] for seq, n in batch.prefill
        )

    def _launch(self, batch: ScheduledBatch, previous: _Launched | None, outbox: Outbox) -> _Launched | None:
        """Queue the model step and the draws of ``batch``; each drawn sequence gets a pending token."""
        try:
            if self.before_step is not None:
                self.before_step(batch)
            logits: list[torch.Tensor] = []
            sampled: list[Sequence] = []
            if batch.decode:
                if previous is None:
                    logits.append(self.runner.decode(batch.decode))
                else:
                    rows = previous.rows
                    sources = [rows.get(s.seq_id, -1) for s in batch.decode]
                    logits.append(self.runner.decode(batch.decode, previous.draws.tokens, sources))
                sampled.extend(batch.decode)
            if batch.prefill:
                out = self.runner.run(batch.prefill)
                finishing = [i for i, (seq, n) in enumerate(batch.prefill) if n == seq.num_uncomputed]
                if len(finishing) == len(batch.prefill):
                    logits.append(out)
                elif finishing:
                    # a list index would be copied to the device synchronously: a wait for the whole chunk
                    logits.append(out.index_select(0, torch.tensor(finishing).to(out.device, non_blocking=True)))
                sampled.extend(batch.prefill[i][0] for i in finishing)
            for seq in batch.decode:
                seq.num_computed += 1
            for seq, n in batch.prefill:
                seq.num_computed += n
            if not sampled:
                return None
            draws = self.sampler.sample(logits[0] if len(logits) == 1 else torch.cat(logits), sampled)
            positions = []
            for seq in sampled:
                positions.append(len(seq.token_ids))
                seq.token_ids.append(PENDING_TOKEN)
            return _Launched(sampled, positions, draws)
        except Exception as exc:
            self._fail_step(exc, {seq.request for seq in (*batch.decode, *(s for s, _ in batch.prefill))}, outbox)
            return None

    def _finish(self, launched: _Launched, outbox: Outbox) -> None:
        """Read a launched step's draws and deliver them."""
        try:
            self._process(launched, launched.draws.fetch(), outbox)
        except Exception as exc:
            self._fail_step(exc, {seq.request for seq in launched.seqs}, outbox)

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

    def _process(self, launched: _Launched, result: SampleResult, outbox: Outbox) -> None:
        for row, (seq, pos) in enumerate(zip(launched.seqs, launched.positions)):
            if seq.status is SequenceStatus.FINISHED:
                continue  # finished at an earlier step while this one ran, or cancelled
            token = result.tokens[row]
            params = seq.params
            seq.token_ids[pos] = token
            num_tokens = pos + 1  # later steps may have appended pending tokens
            request = seq.request
            request.pending_ids[seq.index].append(token)
            if params.logprobs and result.logprobs is not None:
                request.pending_logprobs[seq.index].append(self._logprob_entry(token, row, result, params.top_logprobs))
            is_stop_token = token in request.stop_ids
            if seq.matcher is not None:
                seq.matcher.consume_token(token)
            if is_stop_token and num_tokens - seq.num_prompt_tokens > params.min_tokens - 1:
                seq.finish_reason = "stop"
            elif seq.matcher is not None and seq.matcher.is_stopped():
                seq.detokenizer.add(token)
                seq.finish_reason = "stop"  # the grammar is complete: nothing else may follow
            else:
                seq.detokenizer.add(token)
                if seq.detokenizer.stopped:
                    seq.finish_reason = "stop"
                elif num_tokens >= seq.max_total_tokens:
                    seq.finish_reason = "length"
            if seq.finish_reason is not None:
                del seq.token_ids[num_tokens:]  # draws launched after the last token are void
            self._emit(seq, outbox)

    def _logprob_entry(self, token: int, row: int, result: SampleResult, top: int) -> TokenLogprob:
        assert result.logprobs is not None
        tops: list[TopLogprob] = []
        if top and result.top_ids is not None and result.top_logprobs is not None:
            tops = [
                TopLogprob(t, self._piece(t), lp, self.token_bytes(t))
                for t, lp in zip(result.top_ids[row][:top], result.top_logprobs[row][:top])
            ]
        return TokenLogprob(token, self._piece(token), result.logprobs[row], tops, self.token_bytes(token))

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], clean_up_tokenization_spaces=False)

    def _emit(self, seq: Sequence, outbox: Outbox) -> None:
        request = seq.request
        finished = seq.finish_reason is not None
        text = seq.detokenizer.take(final=finished)
        want_logprobs = seq.params.logprobs
        if not (text or finished or (want_logprobs and request.pending_logprobs[seq.index])):
            return  # part of a character or of a possible stop string: wait for more tokens
        delta = Delta(
            index=seq.index,
            text=text,
            token_ids=request.pending_ids[seq.index],
            logprobs=request.pending_logprobs[seq.index] if want_logprobs else None,
            finish_reason=seq.finish_reason,
        )
        request.pending_ids[seq.index] = []
        request.pending_logprobs[seq.index] = []
        if finished:
            self.scheduler.remove(seq)
            request.num_finished += 1
            if request.finished:
                delta.usage = Usage(len(request.prompt_ids), sum(s.num_output_tokens for s in request.seqs))
                self._active.discard(request)
        outbox.put(request.sink, delta)

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
