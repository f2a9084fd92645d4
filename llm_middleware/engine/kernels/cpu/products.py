"""Linear products on the CPU through the kernel that runs fastest on this machine, per regime.

Three kernels compute ``F.linear`` on the CPU: PyTorch's default (MKL over the weight as it is),
oneDNN over the weight packed once into its blocked layout, and MKL's packed GEMM.  Which one is
fastest depends on the machine and on the number of rows, in no way a rule could guess, so at
start-up every candidate runs the model's own products, once with one row (a lone stream's
decode step) and once with many (a batch, a prompt chunk), and each regime keeps its fastest.

Packed weights are copies (MKL's are two to six times the weight's size), so a candidate is
packed only while all copies stay under a share of the machine's memory, and copies that lost
are dropped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger("llm_middleware")

Kernel = Callable[[torch.Tensor], torch.Tensor]

#: Candidates in order of preference where timings tie: the default needs no copy.
KINDS = ("default", "onednn", "mkl")

# Packed copies are made while all of them together stay under this share of the machine's memory.
PACKED_MEMORY_SHARE = 0.25
# Rows of the "many rows" timing: a full default batch.
MANY_ROWS = 32
_ROUNDS = 7
# The timings run over the first products up to this many bytes of weights: all of a small model's,
# a few layers of a large one's (start-up would otherwise take seconds a timing).
_TIMED_BYTES = 256 * 2**20


def memory_bytes() -> int:
    """The machine's memory, or 0 where it cannot be read (then nothing is packed)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _onednn(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[Kernel, int] | None:
    if weight.dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return None
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)

    def kernel(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return kernel, packed.numel() * packed.element_size()


def _mkl(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[Kernel, int] | None:
    if weight.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return None
    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, MANY_ROWS)
    columns = weight.shape[1]

    def kernel(x: torch.Tensor) -> torch.Tensor:
        # The last argument is the row count the product runs with (any count works with one packing).
        return torch.ops.mkl._mkl_linear(x, packed, weight, bias, x.numel() // columns)

    return kernel, packed.numel() * packed.element_size()


_PACKERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], tuple[Kernel, int] | None]] = {
    "onednn": _onednn, "mkl": _mkl,
}


def _default(weight: torch.Tensor, bias: torch.Tensor | None) -> Kernel:
    return lambda x: F.linear(x, weight, bias)


@torch.inference_mode()
def _reproduces(kernel: Kernel, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The kernel's product of probe rows against ``F.linear`` (a build may carry a broken kernel)."""
    generator = torch.Generator().manual_seed(0)
    tolerance = 1e-4 if weight.dtype == torch.float32 else 1e-2
    for rows in (1, 3):
        probe = torch.randn(rows, weight.shape[1], generator=generator).to(weight.dtype)
        expected = F.linear(probe, weight, bias).float()
        scale = float(expected.abs().mean()) or 1.0
        if not torch.allclose(kernel(probe).float(), expected, rtol=tolerance, atol=tolerance * scale):
            return False
    return True


class CpuProduct:
    """One weight's product: a kernel for one-row inputs and one for more rows."""

    __slots__ = ("one_row", "rows", "columns")

    def __init__(self, one_row: Kernel, rows: Kernel, columns: int) -> None:
        self.one_row = one_row
        self.rows = rows
        self.columns = columns

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.one_row if x.numel() == self.columns else self.rows)(x)


def candidates(weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]], budget: int,
               kinds: Sequence[str] = KINDS) -> dict[str, list[Kernel]]:
    """Each available kind's kernels for every weight, packing while the copies fit ``budget`` bytes.

    A kind that is missing from this build, cannot take a weight's dtype, would outgrow the
    budget or computes a wrong product is left out.
    """
    found: dict[str, list[Kernel]] = {"default": [_default(w, b) for w, b in weights]} if "default" in kinds else {}
    used = 0
    for kind in kinds:
        if kind == "default":
            continue
        kernels: list[Kernel] = []
        size = 0
        try:
            for weight, bias in weights:
                packed = _PACKERS[kind](weight.detach(), None if bias is None else bias.detach())
                if packed is None or used + size + packed[1] > budget or not _reproduces(packed[0], weight, bias):
                    break
                kernels.append(packed[0])
                size += packed[1]
        except (RuntimeError, AttributeError):  # a build without this kernel
            kernels = []
        if weights and len(kernels) == len(weights):
            found[kind] = kernels
            used += size
    return found


@torch.inference_mode()
def _pass_seconds(kernels: list[Kernel], inputs: list[torch.Tensor]) -> float:
    began = time.perf_counter()
    for kernel, x in zip(kernels, inputs):
        kernel(x)
    return time.perf_counter() - began


def fastest(found: dict[str, list[Kernel]], columns: list[int], dtype: torch.dtype, rows: int,
            timer: Callable[[list[Kernel], list[torch.Tensor]], float] = _pass_seconds) -> str:
    """The kind whose pass over every product with ``rows`` rows took the least time in its best round.

    Kinds take turns in each round, and each keeps its fastest: a slow spell of a noisy machine
    adds time to some passes, never takes any away.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = {c: torch.randn(rows, c, generator=generator).to(dtype) for c in set(columns)}
    xs = [inputs[c] for c in columns]
    for kernels in found.values():  # warm-up: first calls create oneDNN primitives, touch packed copies
        timer(kernels, xs)
    times: dict[str, list[float]] = {kind: [] for kind in found}
    for _ in range(_ROUNDS):
        for kind, kernels in found.items():
            times[kind].append(timer(kernels, xs))
    logger.debug("CPU products over %d rows, best pass: %s", rows,
                 ", ".join(f"{kind} {min(t) * 1e3:.2f} ms" for kind, t in times.items()))
    return min(found, key=lambda kind: (min(times[kind]), KINDS.index(kind)))


def choose(weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]], *, budget: int | None = None,
           one_row: str | None = None, rows: str | None = None) -> tuple[list[CpuProduct], str, str]:
    """A product for each ``(weight, bias)``, and the kinds chosen for one row and for many.

    ``one_row``/``rows`` name a kind instead of timing the candidates (it must be available).
    """
    if budget is None:
        budget = int(PACKED_MEMORY_SHARE * memory_bytes())
    wanted = KINDS if one_row is None or rows is None else ("default", one_row, rows)
    found = candidates(weights, budget, wanted)
    columns = [w.shape[1] for w, _ in weights]
    dtype = weights[0][0].dtype if weights else torch.float32
    timed, size = 0, 0
    while timed < len(weights) and (timed == 0 or size < _TIMED_BYTES):
        size += weights[timed][0].numel() * weights[timed][0].element_size()
        timed += 1
    sample = {kind: kernels[:timed] for kind, kernels in found.items()}
    chosen = []
    for forced, count in ((one_row, 1), (rows, MANY_ROWS)):
        if forced is not None and forced not in found:
            raise ValueError(f"no {forced!r} product kernel for these weights on this machine")
        chosen.append(forced or (fastest(sample, columns[:timed], dtype, count) if len(found) > 1 else "default"))
    products = [CpuProduct(found[chosen[0]][i], found[chosen[1]][i], c) for i, c in enumerate(columns)]
    logger.info("CPU linear products: %s kernels for one row, %s for more rows", *chosen)
    return products, chosen[0], chosen[1]
