"""How the CPU kernels are compiled: numba's options, cache names, twin forms and bfloat16 bits.

Numba has no 16-bit floats, so bfloat16 tensors travel as their int16 bits (``numpy_of``); kernels
widen each element to float32 (``widen``) and round each result back (``narrow``) where the model
rounds.  Each kernel is compiled twice (``Kernel``): to run on the calling thread (small work, a
decode step's) and over numba's threads (prompt chunks, large batches).  Compilations are cached on
disk where the package's folder is writable, under names that change with every kernel source.
"""

from __future__ import annotations

import hashlib
import logging
import types
from pathlib import Path
from typing import Any

import torch

try:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba.core import types as nb_types
    from numba.extending import intrinsic
except ImportError:  # every caller falls back to PyTorch ops
    numba = None

logger = logging.getLogger("llm_middleware")

# Reassociation lets sums vectorise; infinities and NaNs keep their meaning (no ``ninf``/``nnan``).
FASTMATH = {"reassoc", "contract"}
# Division as numpy (and PyTorch) divide, to inf or NaN: Python's ZeroDivisionError check on each
# one keeps loops that divide from vectorising.
OPTIONS = {"nogil": True, "fastmath": FASTMATH, "error_model": "numpy", "cache": True}

# Numba checks a cached kernel against its own source file only, not against the helpers it inlines or
# the kernels it calls from other files (``exp`` in the softmax, the attention kernels in the one-call
# step): after an edit of one of those, the cached callers would go on running the old code.  Kernels are
# cached under names that carry a digest of every source in this folder, so that any edit compiles them afresh.
try:
    _SOURCES_DIGEST = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("*.py"))
                                              )).hexdigest()[:16]
except OSError:  # no sources to read: numba cannot cache kernels then either
    _SOURCES_DIGEST = "nosource"

# Below this many elements a kernel runs on the calling thread alone: waking numba's idle threads
# costs tens of microseconds, more than a decode row's whole work.
PARALLEL_WORK = 16384


def numpy_of(tensor: torch.Tensor) -> Any:
    """A CPU tensor's numpy view: bfloat16 as its int16 bits, for ``widen``/``narrow`` to read and write."""
    return tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def tensor_of(array: Any, dtype: torch.dtype) -> torch.Tensor:
    """``numpy_of``'s inverse: a kernel's result array as a tensor of ``dtype``, without a copy."""
    tensor = torch.from_numpy(array)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


def cache_named(function: Any, suffix: str = "") -> Any:
    """``function`` under a name for numba's disk cache (which keys compilations by the function's name
    only) that changes with every kernel source; ``suffix`` names a twin compiled another way."""
    twin = types.FunctionType(function.__code__, function.__globals__, f"{function.__name__}{suffix}")
    twin.__qualname__ = f"{function.__qualname__}{suffix}_{_SOURCES_DIGEST}"
    return twin


class Kernel:
    """One kernel compiled twice: to run on the calling thread, and in parallel over ``prange``."""

    __slots__ = ("alone", "parallel", "threads")

    def __init__(self, function: Any) -> None:
        self.alone = numba.njit(parallel=False, **OPTIONS)(cache_named(function))
        self.parallel = numba.njit(parallel=True, **OPTIONS)(cache_named(function, "_parallel"))
        self.threads = True  # whether numba's threads run here (``warm`` finds out)

    def __call__(self, work: int, *args: Any) -> Any:
        """The kernel on ``args``, over numba's threads only where ``work`` (elements) is large."""
        return (self.parallel if work >= PARALLEL_WORK and self.threads else self.alone)(*args)

    def warm(self, *args: Any) -> Any:
        """Compile both forms on ``args`` (or load them from the disk cache) now, not at a step; the
        calling-thread form's result.

        A failure of the parallel form (numba's threading layer can fail to load) leaves the
        kernel on the calling thread, and so does numba's fallback layer, ``workqueue``: it
        aborts the process when two threads (two models' step loops) use it at once, and is
        slower than the OpenMP layer.  A failure of the other raises.
        """
        result = self.alone(*args)
        try:
            self.parallel(*args)
        except Exception as exc:  # noqa: BLE001 - any failure means: no numba threads
            logger.warning("numba's threads are unavailable, CPU kernels run on one thread: %r", exc)
            self.threads = False
        else:
            self.threads = numba.threading_layer() != "workqueue"
        return result


if numba is not None:
    _I32 = ir.IntType(32)

    @intrinsic
    def widen(typingctx, x):  # noqa: ANN001, ANN201, ARG001
        """An element as float32: a float32 itself, an int16 as the bits of a bfloat16 (exact)."""
        if x == nb_types.float32:
            return nb_types.float32(x), lambda context, builder, sig, args: args[0]
        if x == nb_types.int16:
            def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
                bits = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
                return builder.bitcast(bits, ir.FloatType())
            return nb_types.float32(x), codegen
        return None

    @intrinsic
    def narrow(typingctx, value, like):  # noqa: ANN001, ANN201, ARG001
        """``value`` as an element of the array ``like``: a float32, or a bfloat16's int16 bits rounded to
        the nearest (ties to even, as PyTorch rounds; NaN stays NaN)."""
        if not isinstance(value, nb_types.Float) or not isinstance(like, nb_types.Array):
            return None
        if like.dtype == nb_types.float32:
            def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
                return context.cast(builder, args[0], sig.args[0], nb_types.float32)
            return nb_types.float32(value, like), codegen
        if like.dtype == nb_types.int16:
            def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
                single = context.cast(builder, args[0], sig.args[0], nb_types.float32)
                bits = builder.bitcast(single, _I32)
                odd = builder.and_(builder.lshr(bits, ir.Constant(_I32, 16)), ir.Constant(_I32, 1))
                halfway = builder.add(odd, ir.Constant(_I32, 0x7FFF))  # rounds up past half, ties to the even
                rounded = builder.lshr(builder.add(bits, halfway), ir.Constant(_I32, 16))
                nan = builder.fcmp_unordered("uno", single, single)
                return builder.trunc(builder.select(nan, ir.Constant(_I32, 0x7FC0), rounded), ir.IntType(16))
            return nb_types.int16(value, like), codegen
        return None

    @intrinsic
    def _float_of_bits(typingctx, bits):  # noqa: ANN001, ANN201, ARG001
        """The float32 whose bits are the low 32 of the integer ``bits``."""
        if not isinstance(bits, nb_types.Integer):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
            low = builder.trunc(args[0], _I32) if bits.bitwidth > 32 else args[0]
            return builder.bitcast(low, ir.FloatType())
        return nb_types.float32(bits), codegen

    @numba.njit(inline="always", **OPTIONS)
    def exp(x):  # noqa: ANN001, ANN201
        """``e ** x`` in float32 within a few ulp, for loops that must vectorise: numba's ``np.exp``
        is a library call per element.  ``x = k ln 2 + r``, ``|r| <= ln 2 / 2``: a degree-6 polynomial of ``r``
        (Cephes' ``expf``), times ``2 ** k`` built from its exponent bits.  ``x`` is clamped to the
        range where ``2 ** k`` is a normal float32: results under about 1e-38 come out 0, and over
        2.1e38 (``x > 88.3``) as 2.1e38, not infinity."""
        x = min(max(x, np.float32(-88.0)), np.float32(88.3))
        k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)  # ln 2 in two parts: r stays exact
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        return (p * r * r + r + np.float32(1.0)) * _float_of_bits((np.int64(k) + 127) << 23)

    @numba.njit(inline="always", **OPTIONS)
    def add_row(a, b, out):  # noqa: ANN001, ANN201
        """``out = a + b`` for one row, summed in float32 and rounded once (``out`` may be ``a``)."""
        for i in range(out.shape[0]):
            out[i] = narrow(widen(a[i]) + widen(b[i]), out)

    @numba.njit(inline="always", **OPTIONS)
    def rms_norm_row(x, weight, eps, out):  # noqa: ANN001, ANN201
        """``out = weight * x / rms(x)`` for one row, rounded where the model's norm rounds: the
        normalised value, then the product with the weight."""
        squares = np.float32(0.0)
        for i in range(x.shape[0]):
            squares += widen(x[i]) * widen(x[i])
        scale = np.float32(1.0) / np.sqrt(squares / np.float32(x.shape[0]) + eps)  # an int divisor would make it float64
        for i in range(x.shape[0]):
            out[i] = narrow(widen(narrow(widen(x[i]) * scale, out)) * widen(weight[i]), out)


def jit(function: Any) -> Any:
    """``function`` as a :class:`Kernel` (left as it is without numba: nothing calls it then)."""
    return Kernel(function) if numba is not None else function


