"""The benchmark harness: our HTTP server under concurrent streaming clients, beside the baselines.

    python -m bench.http_bench                                   # CPU: 24M-parameter Qwen3 shape, 1 and 32 streams
    python -m bench.http_bench --size 4b --device cuda --dtype bfloat16 --streams 1,64,256 --new-tokens 256
    python -m bench.http_bench --smoke                           # seconds: checks that every line is produced

Builds a random-weight model from a fixed config (no download), then prints one JSON line
per workload:

* ``server``: ``llm-middleware``'s API behind hypercorn on loopback, N concurrent streaming
  clients (``/v1/completions``, fixed output length with ``ignore_eos``): tokens/s, TTFT and
  inter-token latency p50/p99 (milliseconds), and the memory of the model's weights and KV
  cache (MiB, from the API's metrics).  The clients run in one process per 8 streams
  (``--client-processes``), so that the client's own work does not set the figure.
* ``generate`` (one stream), ``generate_static_batch`` and ``generate_batch`` (transformers'
  own continuous batching), in-process on the same model; ``mistralrs`` where that package
  is installed.
* ``passthrough``: requests/s of a host app's route served alone and behind the middleware.
* ``passthrough_call``: the same route called in-process as an ASGI app, alone and wrapped:
  microseconds per request, the middleware's own cost without HTTP's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
import torch

from llm_middleware.demo_model import build_demo_model


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prompts:
    """Prompt token ids drawn at random from the vocabulary (special tokens left out), fresh at every call:
    no two workloads of a run, nor the warm-up, share a prefix unless a workload builds one."""

    def __init__(self, tokenizer: Any) -> None:
        special = set(tokenizer.all_special_ids)
        self.ids = [i for i in range(len(tokenizer)) if i not in special]
        self.rng = random.Random(0)

    def __call__(self, length: int) -> list[int]:
        return self.rng.choices(self.ids, k=length)

    def distinct(self, n: int, length: int) -> list[list[int]]:
        return [self(length) for _ in range(n)]

    def shared_prefix(self, n: int, prefix: int, length: int) -> list[list[int]]:
        """``n`` prompts of one common ``prefix``-token system prompt and a distinct ``length``-token user turn each."""
        common = self(prefix)
        return [common + self(length) for _ in range(n)]

    def conversations(self, n: int, first: int, turns: int, length: int) -> list[list[list[int]]]:
        """``n`` conversations of a distinct ``first``-token opening and ``turns - 1`` more ``length``-token user turns."""
        return [[self(first)] + [self(length) for _ in range(turns - 1)] for _ in range(n)]


class Server:
    """``bench.server`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, options: dict[str, Any], host_app: str | None = None,
                 log: Path | None = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "bench.server", "--port", str(self.port), "--model", str(model),
               "--options", json.dumps(options)]
        if host_app:
            cmd += ["--host-app", host_app]
        if log:
            cmd += ["--log-level", "debug"]
        with open(log, "a") if log else open(os.devnull, "w") as stderr:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"benchmark server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"benchmark server not ready after {timeout} s")

    def metrics(self) -> dict[str, float]:
        """Every sample of the API's Prometheus metrics, by name (one model is served)."""
        text = httpx.get(self.url + "/ai/metrics", timeout=10).text
        return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}

    def memory(self) -> dict[str, float]:
        """The served model's weights and KV cache in MiB, from the API's Prometheus metrics."""
        samples = self.metrics()
        return {"weights_mib": round(samples["llm_weight_bytes"] / 2**20, 2),
                "kv_cache_mib": round(samples["llm_kv_cache_bytes"] / 2**20, 2)}

    def prompt_tokens(self) -> tuple[float, float]:
        """Prompt tokens served from the prefix cache and computed, so far."""
        samples = self.metrics()
        return samples.get("llm_prompt_tokens_cached_total", 0.0), samples.get("llm_prompt_tokens_computed_total", 0.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def one_stream(client: httpx.AsyncClient, prompt: list[int], new_tokens: int) -> tuple[float, list[float], int, str]:
    """TTFT (s), the gaps between content chunks (s), the completion tokens and the text of one streamed request."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    began = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    text: list[str] = []
    async with client.stream("POST", "/ai/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and (chunk["choices"][0].get("text") or chunk["choices"][0].get("finish_reason")):
                arrivals.append(time.perf_counter())
                text.append(chunk["choices"][0].get("text") or "")
    ttft = arrivals[0] - began if arrivals else float("nan")
    return ttft, [b - a for a, b in zip(arrivals, arrivals[1:])], tokens, "".join(text)


async def conversation(client: httpx.AsyncClient, turns: list[list[int]], new_tokens: int,
                       tokenizer: Any) -> list[tuple[float, list[float], int, str]]:
    """Each user turn in order, each request re-sending the conversation so far: the earlier prompts with the
    answers' text as the client would tokenize it (which need not be the tokens the model drew)."""
    history: list[int] = []
    results = []
    for turn in turns:
        history = history + turn
        result = await one_stream(client, history, new_tokens)
        results.append(result)
        history = history + tokenizer.encode(result[3], add_special_tokens=False)
    return results


async def _streams(url: str, jobs: list[Any], new_tokens: int, start: Any = None,
                   tokenizer_path: str | None = None) -> tuple[list[Any], float, float]:
    """Run one client's share of the streams; return each stream's requests' results and the ``perf_counter``
    times they began and ended.

    A job is a prompt (one request) or, with ``tokenizer_path``, a conversation (its user turns, one
    request each).  Every connection is opened first, as a client that keeps its connections (the
    ``openai`` SDK does) would have them: the figures are the server's, not TCP and client set-up's.
    ``start`` (a barrier) makes the shares of several client processes begin together.
    """
    tokenizer = None
    if tokenizer_path is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        await asyncio.gather(*(client.get("/ai/health") for _ in jobs))
        if start is not None:
            start.wait(timeout=300)
        began = time.perf_counter()
        if tokenizer is None:
            results = [[r] for r in await asyncio.gather(*(one_stream(client, p, new_tokens) for p in jobs))]
        else:
            results = await asyncio.gather(*(conversation(client, turns, new_tokens, tokenizer) for turns in jobs))
        return results, began, time.perf_counter()


def _client_process(url: str, jobs: list[Any], new_tokens: int, start: Any, out: Any, tokenizer_path: str | None) -> None:
    out.put(asyncio.run(_streams(url, jobs, new_tokens, start, tokenizer_path)))


def client_processes(streams: int) -> int:
    """Client processes for ``streams`` streams: one per 8, while half the cores are free for them.

    One Python client process sets its streams up one after another and parses at most about
    10,000 chunks/s: past a few streams it, not the server, sets the figures.  Measured on a
    16-core host against one server, 64 streams: from 1 process 7,781 tokens/s and TTFT p50
    481 ms; from 4, 9,353 and 241 ms; from 8, 10,487 and 156 ms.  ``perf_counter`` is the
    system's monotonic clock, the same in every process, so one start time and one end time
    span them all.
    """
    return max(1, min(-(-streams // 8), (os.cpu_count() or 1) // 2))


def stream_workload(url: str, jobs: list[Any], new_tokens: int, processes: int = 1,
                    tokenizer_path: str | None = None) -> dict[str, float]:
    """Figures of ``jobs`` (prompts, or conversations with ``tokenizer_path``) run at once as streams.

    ``ttft_ms_*`` are over every request; for conversations ``later_ttft_ms_p50`` is over the turns after
    the first, and ``total_s`` is the time until the last stream's last turn ended.
    """
    if processes == 1:
        outcomes = [asyncio.run(_streams(url, jobs, new_tokens, None, tokenizer_path))]
    else:
        per = -(-len(jobs) // processes)
        shares = [jobs[i : i + per] for i in range(0, len(jobs), per)]
        context = multiprocessing.get_context("spawn")
        start, out = context.Barrier(len(shares)), context.Queue()
        clients = [context.Process(target=_client_process, args=(url, share, new_tokens, start, out, tokenizer_path))
                   for share in shares]
        for client in clients:
            client.start()
        outcomes = [out.get() for _ in clients]
        for client in clients:
            client.join()
    streams = [stream for share, _, _ in outcomes for stream in share]
    results = [r for stream in streams for r in stream]
    elapsed = max(end for _, _, end in outcomes) - min(began for _, began, _ in outcomes)
    ttfts = [r[0] * 1000 for r in results]
    gaps = [g * 1000 for r in results for g in r[1]]
    figures = {
        "tokens_per_s": round(sum(r[2] for r in results) / elapsed, 1),
        "ttft_ms_p50": round(percentile(ttfts, 0.5), 1), "ttft_ms_p99": round(percentile(ttfts, 0.99), 1),
        "itl_ms_p50": round(percentile(gaps, 0.5), 2), "itl_ms_p99": round(percentile(gaps, 0.99), 2),
    }
    if tokenizer_path is not None:
        later = [r[0] * 1000 for stream in streams for r in stream[1:]]
        figures.update(later_ttft_ms_p50=round(percentile(later, 0.5), 1), total_s=round(elapsed, 2),
                       tokens=sum(r[2] for r in results))
    return figures


async def passthrough_rate(url: str, requests: int, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.get("/shop")  # warm-up
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                (await client.get("/shop")).raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - began)


async def _asgi_call_seconds(app: Any, calls: int) -> float:
    """Seconds per direct ASGI call of ``GET /shop`` on ``app``, the best of five rounds."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/shop", "raw_path": b"/shop", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"shop")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    rounds = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope), receive, send)
        rounds.append((time.perf_counter() - began) / calls)
    return min(rounds)


def passthrough_call_cost(model: Path, options: dict[str, Any], calls: int) -> dict[str, float]:
    """Microseconds per in-process request to the host route, alone and behind the middleware.

    The wrapped app is never started, so its model does not load: a host route needs no engine.
    """
    from bench.server import host_route
    from llm_middleware.middleware import LLMMiddleware

    wrapped = LLMMiddleware(host_route, model=model, **options)
    try:
        plain_s = asyncio.run(_asgi_call_seconds(host_route, calls))
        wrapped_s = asyncio.run(_asgi_call_seconds(wrapped, calls))
    finally:
        wrapped.close()
    plain_us, wrapped_us = round(plain_s * 1e6, 2), round(wrapped_s * 1e6, 2)
    return {"plain_us": plain_us, "wrapped_us": wrapped_us, "added_us": round(wrapped_us - plain_us, 2)}


def bench_generate(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(prompts, device=model.device)
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return len(prompts) * new_tokens / (time.perf_counter() - began)


def bench_generate_batch(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    began = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    tokens = sum(len(out.generated_tokens) for out in outputs.values())
    return tokens / (time.perf_counter() - began)


def _mistralrs_model_dir(model_dir: Path) -> Path:
    """The model with a config mistral.rs reads: it wants the legacy top-level ``rope_theta``."""
    config = json.loads((model_dir / "config.json").read_text())
    config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    compat = Path(tempfile.mkdtemp(prefix="mistralrs-model-"))
    for item in model_dir.iterdir():
        if item.name != "config.json":
            os.symlink(item, compat / item.name)
    (compat / "config.json").write_text(json.dumps(config))
    return compat


def bench_mistralrs(model_dir: Path, prompts: list[str], new_tokens: int, streams: list[int]) -> dict[int, float] | None:
    """tokens/s of the ``mistralrs`` engine in-process for N concurrent streams (None if not installed).

    Its Python runner serves one call at a time, so N streamed chat requests are opened at once
    and read in turn from one thread (the engine batches them); a streamed chunk is one token.
    """
    try:
        import mistralrs  # type: ignore[import-not-found]
    except ImportError:
        return None
    runner = mistralrs.Runner(which=mistralrs.Which.Plain(model_id=str(_mistralrs_model_dir(model_dir))))

    def run(batch: list[str]) -> float:
        began = time.perf_counter()
        live = [
            runner.send_chat_completion_request(mistralrs.ChatCompletionRequest(
                model="default", messages=[{"role": "user", "content": text}], max_tokens=new_tokens,
                temperature=0.0, stream=True))
            for text in batch
        ]
        tokens = 0
        while live:
            for stream in list(live):
                chunk = next(stream, None)
                if chunk is None:
                    live.remove(stream)
                elif chunk.choices and chunk.choices[0].finish_reason is None:
                    tokens += 1
        return tokens / (time.perf_counter() - began)

    run(prompts[:1])  # warm-up
    return {n: run(prompts[:n]) for n in streams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "4b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--streams", default="1,32", help="comma-separated concurrent stream counts")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quantize", help="also serve the model quantized, each way of a comma-separated list "
                        "(4bit, 8bit, nf4)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the in-process transformers baselines")
    parser.add_argument("--passthrough-requests", type=int, default=2000, help="0 skips the pass-through workload")
    parser.add_argument("--client-processes", type=int, default=None,
                        help="client processes per workload (at most one per stream); default: one per 8 streams "
                             "while half the cores are free")
    parser.add_argument("--options", type=json.loads, default={},
                        help="more engine options for the served model, as JSON (e.g. '{\"burst_window_ms\": 0}')")
    parser.add_argument("--server-log", type=Path, help="append the API servers' debug log (each step that starts "
                        "prompts, each burst) to this file")
    parser.add_argument("--workload", default="standard",
                        help="comma-separated server workloads: standard (--streams streams of distinct prompts), "
                             "shared-prefix (--prefix-streams streams: a common --prefix-tokens system prompt and a "
                             "distinct --turn-tokens user turn each), multi-turn (--prefix-streams conversations: a "
                             "distinct --prefix-tokens opening, then --turns user turns of --turn-tokens, each request "
                             "re-sending the conversation)")
    parser.add_argument("--prefix-cache", choices=["on", "off", "both"], default="on",
                        help="serve with prefix caching on, off, or each in turn (same run)")
    parser.add_argument("--prefix-streams", type=int, default=None,
                        help="streams of the shared-prefix and multi-turn workloads (default 64 on CUDA, 16 elsewhere)")
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--turn-tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--warm-up-each", action="store_true",
                        help="before each shared-prefix and multi-turn workload, run it once with prompts of its own "
                             "and 4 new tokens (2 turns): its first prompt chunks over a cached context pay one-off "
                             "costs (allocator growth, kernel selection) that the standard warm-up does not")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few tokens: checks the harness, not speed")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.streams, args.new_tokens, args.prompt_tokens = "tiny", "1,2", 8, 16
        args.passthrough_requests = min(args.passthrough_requests, 50)
        args.prefix_streams, args.prefix_tokens, args.turn_tokens, args.turns = 2, 40, 8, 2
    streams = [int(n) for n in args.streams.split(",")]
    workloads = args.workload.split(",")
    unknown = set(workloads) - {"standard", "shared-prefix", "multi-turn"}
    if unknown:
        parser.error(f"unknown workload {', '.join(sorted(unknown))}")
    prefix_streams = args.prefix_streams or (64 if args.device.startswith("cuda") else 16)
    common = {"size": args.size, "device": args.device, "dtype": args.dtype, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens}

    def processes_for(n: int) -> int:
        return min(n, args.client_processes or client_processes(n))

    def report(workload: str, **figures: Any) -> None:
        print(json.dumps({"workload": workload, **figures, **common}), flush=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = build_demo_model(Path(tmp) / "model", size=args.size, max_position_embeddings=4096,
                                device=args.device, dtype=args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompts = Prompts(tokenizer)
        biggest = prompts.distinct(max(streams), args.prompt_tokens)
        if not args.no_baselines:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
            report("generate", streams=1, tokens_per_s=round(bench_generate(model, biggest[:1], args.new_tokens), 1))
            report("generate_static_batch", streams=len(biggest),
                   tokens_per_s=round(bench_generate(model, biggest, args.new_tokens), 1))
            report("generate_batch", streams=len(biggest),
                   tokens_per_s=round(bench_generate_batch(model, biggest, args.new_tokens), 1))
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            texts = [tokenizer.decode(p) for p in biggest]  # its Python API takes text prompts
            for n, rate in (bench_mistralrs(path, texts, args.new_tokens, streams) or {}).items():
                report("mistralrs", streams=n, tokens_per_s=round(rate, 1))

        # Prompt chunks keep the engine's default size for the device (see the README's option table).
        largest = max([*streams, prefix_streams] if workloads != ["standard"] else streams)
        options: dict[str, Any] = {"max_batch_size": largest, "device": args.device, "dtype": args.dtype, "seed": 0,
                                   **args.options}
        caching = {"on": [True], "off": [False], "both": [True, False]}[args.prefix_cache]
        variants = [{}] + [{"quantize": q} for q in (args.quantize.split(",") if args.quantize else [])]
        for variant, cache in [(v, c) for v in variants for c in caching]:
            labels = {**variant, "prefix_cache": "on" if cache else "off"}
            server = Server(path, {**options, **variant, "prefix_caching": cache}, log=args.server_log)
            try:
                server.wait_ready("/ai/health")
                memory = server.memory()
                # Warm-up at the largest burst and with a lone request: the first prefill of each
                # shape pays one-off allocator growth and kernel selection, which is start-up cost,
                # not serving speed.  Its prompts are its own: nothing later finds them cached.
                stream_workload(server.url, prompts.distinct(largest, args.prompt_tokens), 4, processes_for(largest))
                stream_workload(server.url, prompts.distinct(1, args.prompt_tokens), 4)

                def measure(workload: str, jobs: list[Any], tokenizer_path: str | None = None,
                            warm_up: list[Any] | None = None, **shape: Any) -> None:
                    procs = processes_for(len(jobs))
                    if warm_up is not None and args.warm_up_each:
                        stream_workload(server.url, warm_up, 4, procs, tokenizer_path)
                    before = server.prompt_tokens()
                    figures = stream_workload(server.url, jobs, args.new_tokens, procs, tokenizer_path)
                    cached, computed = (b - a for a, b in zip(before, server.prompt_tokens()))
                    share = round(cached / (cached + computed), 3) if cached + computed else 0.0
                    report(workload, streams=len(jobs), client_processes=procs, **labels, **shape, **figures,
                           cached_prompt_share=share, **memory)

                for workload in workloads:
                    if workload == "standard":
                        for n in streams:
                            measure("server", prompts.distinct(n, args.prompt_tokens))
                    elif workload == "shared-prefix":
                        # Each its own common prefix: the warm-up's blocks serve nothing measured.
                        warm_up, jobs = (prompts.shared_prefix(prefix_streams, args.prefix_tokens, args.turn_tokens)
                                         for _ in range(2))
                        measure("shared_prefix", jobs, warm_up=warm_up, prefix_tokens=args.prefix_tokens,
                                turn_tokens=args.turn_tokens)
                    else:
                        warm_up = prompts.conversations(prefix_streams, args.prefix_tokens, 2, args.turn_tokens)
                        measure("multi_turn", prompts.conversations(prefix_streams, args.prefix_tokens, args.turns,
                                                                    args.turn_tokens),
                                str(path), warm_up=warm_up, prefix_tokens=args.prefix_tokens,
                                turn_tokens=args.turn_tokens, turns=args.turns)
            finally:
                server.stop()

        for host_app in ("plain", "wrapped") if args.passthrough_requests else ():
            server = Server(path, options, host_app=host_app)
            try:
                server.wait_ready("/shop")
                if host_app == "wrapped":
                    # The model loads in the background while the host app already answers:
                    # measure once loading (which holds the GIL for long stretches) is over.
                    server.wait_ready("/ai/health")
                rate = asyncio.run(passthrough_rate(server.url, args.passthrough_requests, 16))
                report("passthrough", app=host_app, requests_per_s=round(rate, 1))
            finally:
                server.stop()
        if args.passthrough_requests:
            report("passthrough_call", **passthrough_call_cost(path, options, 10 * args.passthrough_requests))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
