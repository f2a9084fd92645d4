"""Engine throughput next to plain ``transformers.generate`` on the same model, in the same run.

    python -m bench.engine_bench [--streams 1,32] [--new-tokens 128] [--size small]
    python -m bench.engine_bench --size 4b --device cuda --dtype bfloat16 --streams 1,64,256

Builds a random-weight Qwen3-architecture model (no download), then prints one JSON line
per workload: tokens/s of ``generate`` for one stream and for a static batch of the largest
stream count, and of the engine for each stream count (concurrent requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.http_bench import bench_generate as generate_rate
from bench.http_bench import Prompts
from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine import Engine


def bench_generate(model, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:
    return statistics.median(generate_rate(model, prompts, new_tokens) for _ in range(repeats))


async def bench_engine(engine: Engine, prompts: Prompts, n: int, length: int, new_tokens: int, repeats: int) -> float:
    """The median tokens/s of ``repeats`` runs of ``n`` concurrent requests, each run with prompts of its own
    (none found in the prefix cache)."""
    runs = []
    for _ in range(repeats):
        batch = prompts.distinct(n, length)
        began = time.perf_counter()
        done = await asyncio.gather(*(
            engine.complete(p, max_tokens=new_tokens, ignore_eos=True, temperature=0) for p in batch
        ))
        tokens = sum(c.usage.completion_tokens for c in done)
        runs.append(tokens / (time.perf_counter() - began))
    return statistics.median(runs)


def off_main_thread(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """``fn(*args, **kwargs)`` on a thread that ends with it.

    On the CPU each thread that runs PyTorch ops keeps an OpenMP pool, and while the main
    thread's lived on, the engine's worker ran its ops at half speed (see
    ``llm_middleware/engine/workers/step_thread.py``).
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,32", help="comma-separated concurrent stream counts")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--size", choices=["tiny", "small", "4b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", choices=["4bit", "8bit", "nf4"], default=None, help="also run the engine quantized")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-generate", action="store_true", help="only run the engine")
    parser.add_argument("--compile", action="store_true", help="also run the engine with compile=True (CUDA)")
    args = parser.parse_args()
    streams = [int(n) for n in args.streams.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        path = off_main_thread(build_demo_model, Path(tmp) / "model", size=args.size, max_position_embeddings=4096,
                               device=args.device, dtype=args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompts = Prompts(tokenizer)
        common = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "size": args.size,
                  "device": args.device, "dtype": args.dtype}

        def report(workload: str, n: int, tok_s: float, **extra: object) -> None:
            line = {"workload": workload, "streams": n, "tokens_per_s": round(tok_s, 1), **common, **extra}
            print(json.dumps(line), flush=True)

        def baselines() -> None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
            report("generate", 1, bench_generate(model, prompts.distinct(1, args.prompt_tokens), args.new_tokens,
                                                 args.repeats))
            batch = prompts.distinct(max(streams), args.prompt_tokens)
            report("generate_static_batch", max(streams), bench_generate(model, batch, args.new_tokens, args.repeats))
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()

        if not args.skip_generate:
            off_main_thread(baselines)
        variants = [{}] + ([{"quantize": args.quantize}] if args.quantize else []) + ([{"compile": True}] if args.compile else [])
        for variant in variants:
            began = time.perf_counter()
            engine = Engine(path, max_batch_size=max(streams), seed=0, device=args.device, dtype=args.dtype, **variant)
            engine.wait_ready_sync()
            load_s = round(time.perf_counter() - began, 1)
            try:
                asyncio.run(bench_engine(engine, prompts, 1, args.prompt_tokens, 8, 1))  # warm-up
                for n in streams:
                    tok_s = asyncio.run(bench_engine(engine, prompts, n, args.prompt_tokens, args.new_tokens,
                                                     args.repeats))
                    memory = engine.stats()
                    extra = {**variant, "load_s": load_s, "weights_mib": round(memory["weight_bytes"] / 2**20, 2),
                             "kv_cache_mib": round(memory["kv_cache_bytes"] / 2**20, 2)}
                    if args.device.startswith("cuda"):
                        extra["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    report("engine", n, tok_s, **extra)
            finally:
                engine.shutdown()


if __name__ == "__main__":
    main()
