"""How closely quantized models follow the bf16 model they come from (random weights, CUDA).

    python -m bench.quant_agreement [--size 4b] [--prompts 8] [--prompt-tokens 32] [--new-tokens 64]

Builds the random-weight demo model, lets the bf16 model continue random prompts greedily, then
runs each quantized form (the engine's packed ``4bit`` and ``8bit``, bitsandbytes' ``nf4``) over
those same tokens and prints one JSON line each: ``greedy_steps``, the mean number of steps its own
greedy decoding would agree with bf16's (up to its first differing choice), ``top1``, the share of
positions where its choice is bf16's, and ``logits_err``, the relative distance of its logits from
bf16's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine.model.loader import quantization_config
from llm_middleware.engine.quantization.linear import quantize_linears
from llm_middleware.engine.quantization.packing import BITS


def quantized(path: Path, kind: str) -> Any:
    from transformers import AutoModelForCausalLM

    if kind == "nf4":
        config = quantization_config("nf4", torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=config,
                                                    device_map={"": 0}).eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    quantize_linears(model, BITS[kind], torch.device("cuda"))
    return model.cuda()


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4b")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kinds", default="4bit,8bit,nf4")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        path = build_demo_model(Path(tmp) / "model", size=args.size, device="cuda", dtype="bfloat16")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, model.config.vocab_size, (args.prompts, args.prompt_tokens), generator=generator)
        tokens = model.generate(prompts.cuda(), max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
        start = args.prompt_tokens - 1  # logits at these positions choose the new tokens
        chosen = tokens[:, args.prompt_tokens:]
        reference = model(tokens).logits[:, start:-1].float()
        del model
        torch.cuda.empty_cache()
        for kind in args.kinds.split(","):
            model = quantized(path, kind)
            logits = model(tokens).logits[:, start:-1].float()
            same = logits.argmax(-1) == chosen
            steps = torch.where(same.all(1), same.shape[1], (~same).int().argmax(1))
            print(json.dumps({
                "kind": kind, "size": args.size, "prompts": args.prompts, "new_tokens": args.new_tokens,
                "greedy_steps": round(float(steps.float().mean()), 1), "top1": round(float(same.float().mean()), 3),
                "logits_err": round(float((logits - reference).norm() / reference.norm()), 4),
            }), flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
