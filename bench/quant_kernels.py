"""The packed-weight Triton products (``kernels.cuda.quant_products``) beside bf16 and PyTorch's
weight-only kernels, at the Qwen3-4B shape's four weights, and a sweep of their launch configs.

    python -m bench.quant_kernels [--rows 1,8,64,256] [--bits 4,8]

First checks every kernel against a float64 product of the dequantized weight (fp32 and bf16,
split and unsplit), then for each weight, row count and width prints one JSON line: microseconds
per product (replayed from CUDA graphs, weights rotated past the L2 cache; see
``bench.quant_products.timed``) of bf16 (the engine's one-row kernel at one row, cuBLAS otherwise),
PyTorch's ``_weight_int4pack_mm`` / ``_weight_int8pack_mm``, dequantize-then-cuBLAS, and our
``gemv`` and ``gemm`` at their fastest configs (named in the line).
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from bench.quant_products import SHAPES, int4_pack, timed
from llm_middleware.engine.kernels.cuda import quant_products as qp
from llm_middleware.engine.kernels.cuda.row_ops import gemv as bf16_gemv
from llm_middleware.engine.kernels.cuda.row_ops import gemv_block_k
from llm_middleware.engine.quantization import packing


def check() -> None:
    torch.manual_seed(0)
    for bits, dtype, (n, k) in itertools.product((4, 8), (torch.float32, torch.bfloat16), ((200, 300), (96, 2560))):
        w = torch.randn(n, k, device="cuda", dtype=dtype) * 0.05
        bias = torch.randn(n, device="cuda", dtype=dtype)
        pw = packing.quantize(w, bits, bias)
        ref_w = packing.dequantize(pw, torch.float64)
        errors = {}
        for rows in (1, 5, 70):
            x = torch.randn(rows, k, device="cuda", dtype=dtype)
            ref = x.double() @ ref_w.T + bias.double()
            outs = {"gemm1": qp.gemm(x, pw, qp.GemmConfig(16, 32, 4, 2, 1), None)}
            config = qp.GemmConfig(16, 64, 4, 3, 3)
            counts = torch.zeros(qp.split_counts(rows, n, config), device="cuda", dtype=torch.int32)
            outs["gemm3"] = qp.gemm(x, pw, config, counts)
            outs["gemm3_again"] = qp.gemm(x, pw, config, counts)
            assert int(counts.abs().sum()) == 0
            if rows == 1:
                outs["gemv"] = qp.gemv(x, pw, qp.GemvConfig(8, 2, 4))
            for name, out in outs.items():
                errors[f"{name}_{rows}"] = float((out.double() - ref).norm() / ref.norm())
        errors["dequantize"] = float((qp.dequantize(pw, dtype).double() - ref_w).abs().max())
        bound = 1e-5 if dtype == torch.float32 else 1e-2
        ok = all(e < bound for e in errors.values())
        print(json.dumps({"check": ok, "bits": bits, "dtype": str(dtype), "shape": [n, k], **errors}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8,64,256")
    parser.add_argument("--bits", default="4,8")
    args = parser.parse_args()
    check()
    torch.manual_seed(0)
    copies = 4
    row_counts = [int(r) for r in args.rows.split(",")]
    for name, n, k in SHAPES:
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        for bits in [int(b) for b in args.bits.split(",")]:
            packed = [packing.quantize(w, bits) for w in weights]
            if bits == 4:
                theirs = [int4_pack(w, 128) for w in weights]
                their = lambda x, i: torch.ops.aten._weight_int4pack_mm(x, theirs[i][0], 128, theirs[i][1])  # noqa: E731
            else:
                codes = [(packing.unpack(p.words, 8) - 128).to(torch.int8).contiguous() for p in packed]
                scales = [p.scales[0].to(torch.bfloat16) for p in packed]
                their = lambda x, i: torch.ops.aten._weight_int8pack_mm(x, codes[i], scales[i])  # noqa: E731
            for rows in row_counts:
                x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
                line: dict[str, object] = {"weight": name, "shape": [n, k], "rows": rows, "bits": bits}
                if rows == 1:
                    block_k = gemv_block_k(weights[0])
                    line["bf16_us"] = timed(lambda i: bf16_gemv(x, weights[i], None, block_k), copies)
                else:
                    line["bf16_us"] = timed(lambda i: F.linear(x, weights[i]), copies)
                try:
                    line["torch_us"] = timed(lambda i: their(x, i), copies)
                except RuntimeError as exc:
                    line["torch_us"] = f"error: {str(exc)[:80]}"
                line["dequant_cublas_us"] = timed(lambda i: F.linear(x, qp.dequantize(packed[i], torch.bfloat16)), copies)
                best: dict[str, tuple[float, object]] = {}
                if rows == 1:
                    for block_n, chunks, warps in itertools.product((4, 8, 16), (1, 2, 4), (4, 8)):
                        config = qp.GemvConfig(block_n, chunks, warps)
                        us = timed(lambda i: qp.gemv(x, packed[i], config), copies)
                        if "gemv" not in best or us < best["gemv"][0]:
                            best["gemv"] = (us, config)
                block_ms = [m for m in (16, 32, 64, 128) if m <= max(16, rows)]
                for block_m, block_n, stages, split in itertools.product(block_ms, (32, 64, 128), (2, 4), (1, 2, 4, 8, 16)):
                    warps = 8 if block_m * block_n >= 8192 else 4
                    config = qp.GemmConfig(block_m, block_n, warps, stages, split)
                    counts = torch.zeros(max(1, qp.split_counts(rows, n, config)), device="cuda", dtype=torch.int32)
                    try:
                        us = timed(lambda i: qp.gemm(x, packed[i], config, counts), copies)
                    except Exception as exc:  # noqa: BLE001 - a config the GPU cannot hold: skip it
                        print(json.dumps({"skipped": str(config), "why": str(exc)[:80]}), flush=True)
                        continue
                    if "gemm" not in best or us < best["gemm"][0]:
                        best["gemm"] = (us, config)
                for kind, (us, config) in best.items():
                    line[f"{kind}_us"] = us
                    line[f"{kind}_config"] = list(config)
                fastest = min(v for key, v in line.items() if key.endswith("_us") and isinstance(v, float)
                              and key != "bf16_us")
                line["speedup"] = round(line["bf16_us"] / fastest, 2)  # type: ignore[operator]
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
