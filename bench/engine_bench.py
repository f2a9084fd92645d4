"""Engine throughput next to plain ``transformers.generate`` on the same model, in the same run.

    python -m bench.engine_bench [--streams 32] [--new-tokens 128] [--size small]

Builds a random-weight Qwen3-architecture model (no download), then prints one JSON line
per workload: tokens/s of ``generate`` for one stream and for a static batch, and of the
engine for one stream and for N concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine import Engine


def prompt_ids(tokenizer, n: int, length: int) -> list[list[int]]:
    base = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 40, add_special_tokens=False)
    return [base[i : i + length] for i in range(n)]


def bench_generate(model, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:
    ids = torch.tensor(prompts)
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
        runs.append(len(prompts) * new_tokens / (time.perf_counter() - began))
    return statistics.median(runs)


async def bench_engine(engine: Engine, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        done = await asyncio.gather(*(
            engine.complete(p, max_tokens=new_tokens, ignore_eos=True, temperature=0) for p in prompts
        ))
        tokens = sum(c.usage.completion_tokens for c in done)
        runs.append(tokens / (time.perf_counter() - began))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = build_demo_model(Path(tmp) / "model", size=args.size, max_position_embeddings=4096)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        one = prompt_ids(tokenizer, 1, args.prompt_tokens)
        many = prompt_ids(tokenizer, args.streams, args.prompt_tokens)
        common = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "size": args.size}

        def report(workload: str, streams: int, tok_s: float) -> None:
            print(json.dumps({"workload": workload, "streams": streams, "tokens_per_s": round(tok_s, 1), **common}), flush=True)

        report("generate", 1, bench_generate(model, one, args.new_tokens, args.repeats))
        report("generate_static_batch", args.streams, bench_generate(model, many, args.new_tokens, args.repeats))
        del model
        engine = Engine(path, max_batch_size=max(args.streams, 1), max_prefill_tokens=2048, seed=0)
        engine.wait_ready_sync()
        try:
            asyncio.run(bench_engine(engine, one, 8, 1))  # warm-up
            report("engine", 1, asyncio.run(bench_engine(engine, one, args.new_tokens, args.repeats)))
            report("engine", args.streams, asyncio.run(bench_engine(engine, many, args.new_tokens, args.repeats)))
        finally:
            engine.shutdown()


if __name__ == "__main__":
    main()
