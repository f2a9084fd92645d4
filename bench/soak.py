"""Soak test: a real server under mixed traffic for a bounded time, then a check that nothing leaked.

``python -m bench.soak --duration 60`` starts ``llm-middleware serve`` on 127.0.0.1 with the tiny
random-weight demo model (or ``--model DIR``), runs ``--clients`` concurrent clients until the
duration or the request budget is spent, and prints one JSON line of results: requests
completed, cancelled (the client walked away mid-stream), rejected (429/503), garbage answered
with 4xx, server errors, latencies, and the engine's KV-cache counts (from ``/ai/metrics``)
before and after.  It exits non-zero when a request got a 5xx or KV blocks were not all returned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

BASE = "/ai"
PROMPTS = ["Hello", "Write a haiku about the sea.", "Explain HTTP in one sentence.", "List three colours."]
# Bodies a confused or hostile client sends: each must get a 4xx.
GARBAGE: list[tuple[bytes, str]] = [
    (b'{"messages": [', "application/json"),
    (b'{"messages": "hello"}', "application/json"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', "application/json"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 100000}', "application/json"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json"),
    (b"messages=hi", "application/x-www-form-urlencoded"),
    (b"", "application/json"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "no-such-model"}', "application/json"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", '
     b'"json_schema": {"name": "x", "schema": {"type": "banana"}}}}', "application/json"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_counts(metrics_text: str) -> dict[str, float]:
    """Waiting, running and KV-block gauges of ``/metrics``, summed over models."""
    wanted = {"llm_waiting_requests", "llm_running_sequences", "llm_kv_blocks_used", "llm_kv_blocks_free"}
    counts = dict.fromkeys(sorted(wanted), 0.0)
    for line in metrics_text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts


class Soak:
    """The clients and what they saw."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.started = 0
        self.deadline = time.monotonic() + args.duration

    def _budget_left(self) -> bool:
        if time.monotonic() >= self.deadline or self.started >= self.args.max_requests:
            return False
        self.started += 1
        return True

    async def client(self, number: int) -> None:
        rng = random.Random(self.args.seed + number)
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            while self._budget_left():
                roll = rng.random()
                try:
                    if roll < self.args.garbage_share:
                        await self._garbage(http, rng)
                    elif roll < self.args.garbage_share + self.args.disconnect_share:
                        await self._walk_away(http, rng)
                    else:
                        await self._complete(http, rng)
                except httpx.HTTPError as exc:
                    self.counts[f"transport_error:{type(exc).__name__}"] += 1

    def _body(self, rng: random.Random, stream: bool) -> dict[str, Any]:
        max_tokens = rng.randint(4, self.args.max_tokens)
        return {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": max_tokens,
                "min_tokens": max_tokens, "stream": stream, "temperature": 0.8, "seed": rng.randint(0, 2**31)}

    def _refused(self, status: int) -> bool:
        if status in (429, 503):
            self.counts["rejected"] += 1
            return True
        if status >= 500:
            self.counts[f"server_error:{status}"] += 1
            return True
        return False

    async def _complete(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        began = time.monotonic()
        body = self._body(rng, stream=rng.random() < 0.7)
        if not body["stream"]:
            response = await http.post(f"{BASE}/v1/chat/completions", json=body)
            if self._refused(response.status_code):
                return
            ok = response.status_code == 200 and response.json()["usage"]["completion_tokens"] == body["max_tokens"]
        else:
            async with http.stream("POST", f"{BASE}/v1/chat/completions", json=body) as response:
                if self._refused(response.status_code):
                    await response.aread()
                    return
                events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            ok = bool(events) and events[-1] == "data: [DONE]" and '"finish_reason":"length"' in events[-2]
        self.counts["completed" if ok else "wrong_answer"] += 1
        self.latencies.append(time.monotonic() - began)

    async def _walk_away(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {**self._body(rng, stream=True), "max_tokens": 400, "min_tokens": 400}
        async with http.stream("POST", f"{BASE}/v1/chat/completions", json=body) as response:
            if self._refused(response.status_code):
                await response.aread()
                return
            wanted = rng.randint(1, 5)
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    wanted -= 1
                    if wanted == 0:
                        break
        self.counts["cancelled"] += 1  # leaving the block closes the connection mid-stream

    async def _garbage(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        content, content_type = rng.choice(GARBAGE)
        response = await http.post(f"{BASE}/v1/chat/completions", content=content, headers={"content-type": content_type})
        if 400 <= response.status_code < 500 and "error" in response.json():
            self.counts["garbage_4xx"] += 1
        elif not self._refused(response.status_code):
            self.counts[f"garbage_answered_{response.status_code}"] += 1


async def wait_idle(url: str, timeout: float) -> dict[str, float]:
    """The engine's counts once nothing runs or waits (or when ``timeout`` passes)."""
    until = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while True:
            counts = engine_counts((await http.get(f"{BASE}/metrics")).text)
            if (counts["llm_running_sequences"] == 0 and counts["llm_waiting_requests"] == 0) or time.monotonic() > until:
                return counts
            await asyncio.sleep(0.2)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def sample_rss(pid: int, samples: list[float], every: float = 5.0) -> None:
    while True:
        samples.append(rss_mib(pid))
        await asyncio.sleep(every)


async def run(url: str, args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    before = await wait_idle(url, 30)
    soak = Soak(url, args)
    began = time.monotonic()
    rss: list[float] = []
    sampler = asyncio.create_task(sample_rss(server_pid, rss))
    await asyncio.gather(*(soak.client(k) for k in range(args.clients)))
    sampler.cancel()
    elapsed = time.monotonic() - began
    after = await wait_idle(url, 30)
    total = sum(soak.counts.values())
    server_errors = sum(v for k, v in soak.counts.items() if k.startswith("server_error"))
    lat = sorted(soak.latencies)
    return {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "requests": total,
        **dict(sorted(soak.counts.items())),
        "server_error_rate": round(server_errors / total, 4) if total else 0.0,
        "rejected_rate": round(soak.counts["rejected"] / total, 4) if total else 0.0,
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
        "kv_before": before,
        "kv_after": after,
        "kv_returned": before == after,
        # The server's resident memory, sampled every 5 s: flat once warm means nothing leaks per request.
        "server_rss_mib": {"first": rss[0], "middle": rss[len(rss) // 2], "last": rss[-1], "max": max(rss)},
    }


def start_server(model: str, port: int, args: argparse.Namespace, log: Any) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "llm_middleware.cli", "serve", "--model", model, "--port", str(port),
               "--max-batch-size", str(args.max_batch_size), "--drain-timeout", "5"]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{BASE}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError("the server did not become ready in 180 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic (at most 600)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--disconnect-share", type=float, default=0.2, help="share of requests abandoned mid-stream")
    parser.add_argument("--garbage-share", type=float, default=0.1, help="share of requests with a malformed body")
    parser.add_argument("--max-tokens", type=int, default=32, help="largest answer asked for")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's batch size")
    parser.add_argument("--model", help="model directory (default: the tiny demo model, built in a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the clients' choices")
    args = parser.parse_args(argv)
    args.duration = min(args.duration, 600.0)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from llm_middleware.demo_model import build_demo_model

            model = str(build_demo_model(Path(tmp) / "tiny", arch="qwen3", size="tiny"))
        port = free_port()
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            process = start_server(model, port, args, log)
            try:
                result = asyncio.run(run(f"http://127.0.0.1:{port}", args, process.pid))
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        result["server_exit_code"] = process.returncode
        result["server_tracebacks"] = log_path.read_text(errors="replace").count("Traceback")
    print(json.dumps(result))
    failed = not result["kv_returned"] or result["server_error_rate"] > 0 or result["server_tracebacks"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
