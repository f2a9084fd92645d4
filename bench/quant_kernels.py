"""The engine's packed-weight products (``quantization.linear.PackedLinear`` on CUDA) beside bf16 and
PyTorch's int4 weight-only kernel, at the Qwen3-4B shape's four weights.

    python -m bench.quant_kernels [--rows 1,8,64,256] [--bits 4,8]

For each weight, width and row count prints one JSON line: microseconds per product, replayed from
CUDA graphs with the weights rotated past the L2 cache (``bench.quant_products.timed``), of bf16 (the
engine's one-row kernel at one row, cuBLAS otherwise), ``_weight_int4pack_mm`` (4-bit, group 128)
and the packed layer, with the launch config its first product chose.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from bench.quant_products import SHAPES, int4_pack, timed
from llm_middleware.engine.kernels.cuda import quant_products as qp
from llm_middleware.engine.kernels.cuda.row_ops import gemv as bf16_gemv
from llm_middleware.engine.kernels.cuda.row_ops import gemv_block_k
from llm_middleware.engine.quantization.linear import PackedLinear


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8,64,256")
    parser.add_argument("--bits", default="4,8")
    args = parser.parse_args()
    torch.manual_seed(0)
    copies = 4  # 4 copies of the largest weight exceed the H100's 50 MB of L2
    for name, n, k in SHAPES:
        linears = [torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        weights = [lin.weight for lin in linears]
        tiles = [int4_pack(w, 128) for w in weights]
        for bits in [int(b) for b in args.bits.split(",")]:
            packed = [PackedLinear.from_linear(lin, bits, torch.device("cuda")) for lin in linears]
            for rows in [int(r) for r in args.rows.split(",")]:
                x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
                line: dict[str, object] = {"weight": name, "shape": [n, k], "rows": rows, "bits": bits}
                if rows == 1:
                    block_k = gemv_block_k(weights[0])
                    line["bf16_us"] = timed(lambda i: bf16_gemv(x, weights[i], None, block_k), copies)
                else:
                    line["bf16_us"] = timed(lambda i: F.linear(x, weights[i]), copies)
                if bits == 4:
                    line["int4pack_us"] = timed(
                        lambda i: torch.ops.aten._weight_int4pack_mm(x, tiles[i][0], 128, tiles[i][1]), copies)
                line["packed_us"] = timed(lambda i: packed[i](x), copies)
                kernel = qp._gemv_kernel if rows == 1 else qp._gemm_kernel
                if kernel.best_config is not None and rows <= 256:
                    line["config"] = str(kernel.best_config)
                line["speedup"] = round(line["bf16_us"] / line["packed_us"], 2)  # type: ignore[operator]
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
