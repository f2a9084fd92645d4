"""The benchmark harness in its CI-sized form: it must produce every JSON line (speed is not checked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_http_bench_smoke_prints_every_workload(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "server.log"
    out = subprocess.run([sys.executable, "-m", "bench.http_bench", "--smoke", "--client-processes", "2",
                          "--server-log", str(log), "--options", '{"max_model_len": 1024}'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=280, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    seen = {(line["workload"], line.get("streams"), line.get("app")) for line in lines}
    assert {("generate", 1, None), ("generate_static_batch", 2, None), ("generate_batch", 2, None),
            ("server", 1, None), ("server", 2, None), ("passthrough", None, "plain"),
            ("passthrough", None, "wrapped"), ("passthrough_call", None, None)} <= seen
    for line in lines:
        if line["workload"] == "server":
            assert line["client_processes"] == line["streams"]  # 2 streams: read from two processes
            assert line["tokens_per_s"] > 0
            assert 0 < line["ttft_ms_p50"] <= line["ttft_ms_p99"]
            assert 0 <= line["itl_ms_p50"] <= line["itl_ms_p99"]
            assert line["weights_mib"] > 0
            assert 0 < line["kv_cache_mib"] < 2  # 2 streams x 1,024 tokens, as asked (4,096 would be 4 MiB)
            assert line["prefix_cache"] == "on" and line["cached_prompt_share"] == 0  # no two prompts share a block
        elif line["workload"] == "passthrough":
            assert line["requests_per_s"] > 0
        elif line["workload"] == "passthrough_call":
            assert 0 < line["plain_us"] < line["wrapped_us"]
            assert line["added_us"] == round(line["wrapped_us"] - line["plain_us"], 2)
        else:
            assert line["tokens_per_s"] > 0
    steps = log.read_text()  # how each burst was gathered and chunked
    assert re.search(r"burst: [12] requests after [\d.]+ ms", steps)
    assert re.search(r"step: [01] decode rows and [12] prompts \((16|32) prompt tokens\); \d+ waiting, \d+ being read", steps)


def test_http_bench_smoke_runs_the_prefix_workloads_with_the_cache_on_and_off() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bench.http_bench", "--smoke", "--no-baselines", "--passthrough-requests",
                          "0", "--client-processes", "1", "--workload", "shared-prefix,multi-turn", "--prefix-cache",
                          "both"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(line["workload"], line["prefix_cache"]) for line in lines] == [
        ("shared_prefix", "on"), ("multi_turn", "on"), ("shared_prefix", "off"), ("multi_turn", "off")]
    for line in lines:
        assert line["streams"] == 2 and 0 < line["ttft_ms_p50"] <= line["ttft_ms_p99"]
        # The common system prompt, and each conversation's earlier turns, come from the cache when it is on.
        assert (0 < line["cached_prompt_share"] < 1) if line["prefix_cache"] == "on" else line["cached_prompt_share"] == 0
        if line["workload"] == "multi_turn":
            assert line["turns"] == 2 and 0 < line["later_ttft_ms_p50"]
            assert line["tokens"] == 2 * 2 * 8  # streams x turns x new tokens
