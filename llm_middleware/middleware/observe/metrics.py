"""Prometheus metrics of one middleware, served at ``{base_path}/metrics``.

Every middleware has its own ``CollectorRegistry`` (several can live in one process, each
with its own engine); nothing is registered globally.  Counters and histograms are updated
as requests run; the engine's live counts (waiting, running, KV blocks), its prompt tokens served
from the prefix cache and computed, and memory (weights, KV cache) are read from ``engine.stats()``
at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...api.core.http import Response
from ...errors import LLMError

if TYPE_CHECKING:
    from ...engine.engine import Engine

# Token latencies of a CPU demo model and of a GPU server both land inside these buckets.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _EngineCollector(Collector):
    """The engine's live counts per generative model and memory per model, read when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        families = {
            "waiting": GaugeMetricFamily("llm_waiting_requests", "Requests queued for a batch slot", labels=["model"]),
            "running": GaugeMetricFamily("llm_running_sequences", "Sequences in the running batch", labels=["model"]),
            "used": GaugeMetricFamily("llm_kv_blocks_used", "KV-cache blocks holding sequences", labels=["model"]),
            "free": GaugeMetricFamily("llm_kv_blocks_free", "Free KV-cache blocks", labels=["model"]),
            "cached": GaugeMetricFamily("llm_kv_blocks_cached", "KV-cache blocks holding a cached prefix, in use or free",
                                        labels=["model"]),
            "cached_tokens": CounterMetricFamily("llm_prompt_tokens_cached", "Prompt tokens served from the prefix cache",
                                                 labels=["model"]),
            "computed_tokens": CounterMetricFamily("llm_prompt_tokens_computed", "Prompt tokens computed",
                                                   labels=["model"]),
            "hit_rate": GaugeMetricFamily("llm_prefix_cache_hit_rate",
                                          "Share of the prompt tokens so far served from the prefix cache",
                                          labels=["model"]),
            "weights": GaugeMetricFamily("llm_weight_bytes", "Bytes of the model's weights as loaded", labels=["model"]),
            "cache": GaugeMetricFamily("llm_kv_cache_bytes", "Bytes of the model's KV cache", labels=["model"]),
        }
        for info in self._engine.models():
            try:
                stats = self._engine.stats(info.name)
            except LLMError:  # the model went away between the two calls (a remote engine's upstream)
                continue
            if "weight_bytes" in stats:  # a remote engine's weights live upstream
                families["weights"].add_metric([info.name], stats["weight_bytes"])
                families["cache"].add_metric([info.name], stats["kv_cache_bytes"])
            if info.task != "generate":
                continue
            families["waiting"].add_metric([info.name], stats["waiting"])
            families["running"].add_metric([info.name], stats["running"])
            families["used"].add_metric([info.name], stats["total_kv_blocks"] - stats["free_kv_blocks"])
            families["free"].add_metric([info.name], stats["free_kv_blocks"])
            if "cached_kv_blocks" in stats:  # the engine's own KV cache (a remote engine's lives upstream)
                families["cached"].add_metric([info.name], stats["cached_kv_blocks"])
                families["cached_tokens"].add_metric([info.name], stats["cached_prompt_tokens"])
                families["computed_tokens"].add_metric([info.name], stats["computed_prompt_tokens"])
                prompt_tokens = stats["cached_prompt_tokens"] + stats["computed_prompt_tokens"]
                families["hit_rate"].add_metric(
                    [info.name], stats["cached_prompt_tokens"] / prompt_tokens if prompt_tokens else 0.0)
        yield from families.values()


class Metrics:
    """The metrics of one middleware and its engine."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "llm_requests", "Requests under the base path, by route, status and model",
            ["route", "status", "model"], registry=self.registry,
        )
        self.duration = Histogram(
            "llm_request_duration_seconds", "Time from a request's arrival to its last byte, by route",
            ["route"], buckets=_DURATION_BUCKETS, registry=self.registry,
        )
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry)
        self.completion_tokens = Counter(
            "llm_completion_tokens", "Completion tokens generated", ["model"], registry=self.registry
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds", "Time from a streamed request's arrival to its first token",
            ["model"], buckets=_TTFT_BUCKETS, registry=self.registry,
        )
        self.inter_token = Histogram(
            "llm_inter_token_latency_seconds", "Time between consecutive tokens of a streamed choice",
            ["model"], buckets=_ITL_BUCKETS, registry=self.registry,
        )
        self._inter_token_by_model: dict[str, Any] = {}
        self.tool_calls = Counter(
            "llm_tool_calls", "Server-side tool calls, by tool and outcome", ["tool", "outcome"], registry=self.registry
        )
        self.tool_duration = Histogram(
            "llm_tool_call_duration_seconds", "Time one server-side tool call took, by tool",
            ["tool"], buckets=_TOOL_BUCKETS, registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))

    def count_request(self, route: str, status: int, model: str, seconds: float) -> None:
        """A request under the base path ended."""
        self.requests.labels(route, str(status), model).inc()
        self.duration.labels(route).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        """A generation or embedding finished with these token counts."""
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)

    def observe_ttft(self, model: str, seconds: float) -> None:
        """The first token of a streamed request arrived ``seconds`` after the request."""
        self.ttft.labels(model).observe(seconds)

    def observe_inter_token(self, model: str, seconds: float) -> None:
        """One token of a streamed choice arrived ``seconds`` after the previous one."""
        child = self._inter_token_by_model.get(model)
        if child is None:  # labels() takes a lock and builds a key: once per model, not per token
            child = self._inter_token_by_model[model] = self.inter_token.labels(model)
        child.observe(seconds)

    def count_tool_call(self, tool: str, outcome: str, seconds: float) -> None:
        """A server-side tool call ended with ``outcome`` after ``seconds``."""
        self.tool_calls.labels(tool, outcome).inc()
        self.tool_duration.labels(tool).observe(seconds)

    def response(self) -> Response:
        """The Prometheus text exposition of every metric."""
        return Response(200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.registry))
