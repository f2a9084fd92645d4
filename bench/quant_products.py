"""Weight-quantized matrix products on CUDA beside bf16, at the Qwen3-4B shape's four weights.

    python -m bench.quant_products [--rows 1,16,64,256] [--group 128]

For each weight (fused q/k/v, o, fused gate/up, down) and row count, times the product replayed
from a CUDA graph (median of several replays of 20 products each, weights rotated so that no
replay reads from L2), and prints one JSON line: microseconds per product for bf16 cuBLAS, PyTorch's
int4 weight-only kernel (``_weight_int4pack_mm``, asymmetric, groups along K) and bitsandbytes NF4
(where bitsandbytes is installed), with each one's error against a float64 product.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch

#: (name, out_features, in_features) of one Qwen3-4B layer's products, q/k/v and gate/up merged.
SHAPES = [("qkv", 6144, 2560), ("o", 2560, 4096), ("gate_up", 19456, 2560), ("down", 2560, 9728)]


def int4_pack(weight: torch.Tensor, group: int, inner_k_tiles: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` as PyTorch's packed int4 tiles and its ``[K / group, N, 2]`` scales and zeros."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // group, group)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-6)
    zeros = low + 8 * scales
    q = ((w - low) / scales).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    tiles = torch.ops.aten._convert_weight_to_int4pack(packed, inner_k_tiles)
    sz = torch.cat([scales, zeros], -1).reshape(n, k // group, 2).transpose(0, 1).contiguous().to(torch.bfloat16)
    return tiles, sz


def timed(fn: Callable[[int], torch.Tensor], copies: int, replays: int = 15) -> float:
    """Median microseconds of one call of ``fn(i)`` (``i`` picks one of ``copies`` weight copies),
    replayed from a graph of 20 calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i % copies)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(20):
            fn(i % copies)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / 20)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,16,64,256")
    parser.add_argument("--group", type=int, default=128)
    args = parser.parse_args()
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbf
    except ImportError:
        bnb = bnbf = None
    torch.manual_seed(0)
    copies = 4  # 4 copies of the largest weight exceed the H100's 50 MB of L2
    for name, n, k in SHAPES:
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        packed = [int4_pack(w, args.group) for w in weights]
        nf4 = [bnbf.quantize_4bit(w, quant_type="nf4") for w in weights] if bnbf else None
        for rows in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            exact = x.double() @ weights[0].double().T
            line: dict[str, object] = {"weight": name, "shape": [n, k], "rows": rows}

            def err(out: torch.Tensor) -> float:
                return float((out.double() - exact).norm() / exact.norm())

            line["bf16_us"] = timed(lambda i: torch.nn.functional.linear(x, weights[i]), copies)
            line["int4_us"] = timed(lambda i: torch.ops.aten._weight_int4pack_mm(x, packed[i][0], args.group,
                                                                                   packed[i][1]), copies)
            line["int4_err"] = err(torch.ops.aten._weight_int4pack_mm(x, packed[0][0], args.group, packed[0][1]))
            if nf4 is not None:
                line["nf4_us"] = timed(lambda i: bnb.matmul_4bit(x, nf4[i][0].t(), quant_state=nf4[i][1]), copies)
                line["nf4_err"] = err(bnb.matmul_4bit(x, nf4[0][0].t(), quant_state=nf4[0][1]))
            line["int4_speedup"] = round(line["bf16_us"] / line["int4_us"], 2)  # type: ignore[operator]
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
