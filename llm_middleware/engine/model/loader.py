"""Loading a model and its tokenizer through ``from_pretrained``, with in-situ quantization."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ...demo_model import is_demo_model
from ...errors import InvalidRequestError
from ..quantization.linear import quantize_linears
from ..quantization.packing import BITS

logger = logging.getLogger("llm_middleware")

Quantize = Literal["4bit", "8bit", "nf4"] | None


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and says why."""


class LoadCancelledError(RuntimeError):
    """The load was abandoned between two of its steps (the engine stopped meanwhile)."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise LoadCancelledError("the load was abandoned: the engine stopped")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    task: Literal["generate", "embed"]
    random_weights: bool


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, source: str,
                  trust_remote_code: bool = False) -> torch.dtype | str:
    """The dtype to load ``source`` in: ``"auto"`` is the checkpoint's own on CUDA; on a CPU it is
    bfloat16 for a bfloat16 checkpoint where the CPU has AMX (whose bfloat16 products beat float32
    ones), float32 otherwise (16-bit products elsewhere on a CPU are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return "auto"
        if _has_amx() and _checkpoint_dtype(source, trust_remote_code) == torch.bfloat16:
            return torch.bfloat16
        return torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'") from None


def _has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def _checkpoint_dtype(source: str, trust_remote_code: bool) -> Any:
    """The dtype the checkpoint's config names (None where it names none or cannot be read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - loading reports the real error with its own message
        return None
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, named, None) if isinstance(named, str) else named


def is_local_path(source: str) -> bool:
    """Whether ``source`` names a directory (existing or not) rather than an ``org/name`` hub id."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def detect_task(source: str) -> Literal["generate", "embed"]:
    """``embed`` for sentence-transformers folders and encoder-only configs, else ``generate``."""
    path = Path(source)
    if (path / "modules.json").is_file():
        return "embed"
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            archs = json.loads(config_file.read_text()).get("architectures") or []
        except (OSError, ValueError, AttributeError):  # loading it reports what is wrong, once
            return "generate"
        if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
            return "embed"
    return "generate"


def quantization_config(quantize: Quantize, dtype: Any) -> Any:
    """bitsandbytes' settings for ``quantize="nf4"``; None for the other options."""
    if quantize is None or quantize in BITS:
        return None
    if quantize != "nf4":
        raise InvalidRequestError(f"quantize must be None, '4bit', '8bit' or 'nf4', got {quantize!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"quantize={quantize!r} needs bitsandbytes: pip install 'llm_middleware[quantize]'"
        ) from None
    from transformers import BitsAndBytesConfig

    compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def load(
    source: str | os.PathLike[str],
    *,
    task: Literal["auto", "generate", "embed"],
    quantize: Quantize,
    dtype: str | torch.dtype,
    device: str,
    attn_implementation: str,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    cancel: threading.Event | None = None,
) -> LoadedModel:
    """Load ``source`` (hub id or local directory); raise :class:`ModelLoadError` naming it on failure.

    Once ``cancel`` is set, the load stops at its next step (tokenizer, weights, placement) with
    :class:`LoadCancelledError`: a step under way cannot be interrupted safely, only not followed.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = os.fspath(source)
    local = Path(source).expanduser()
    if local.exists():
        source = str(local)
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"model directory {local} has no config.json: is it a transformers model folder?")
    elif is_local_path(source):
        raise ModelLoadError(f"model path {source} does not exist")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, source, trust_remote_code)
    chosen_task = detect_task(source) if task == "auto" else task
    shown = dtype if dtype != "auto" or torch_dtype == "auto" else f"auto: {str(torch_dtype).removeprefix('torch.')}"
    logger.info("loading %s model %s on %s (dtype=%s, quantize=%s)", chosen_task, source, dev, shown, quantize)
    common: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    try:
        _check(cancel)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        _check(cancel)
        if chosen_task == "embed":
            model = AutoModel.from_pretrained(source, **common)
            _check(cancel)
            model = model.to(dev)
        else:
            qconfig = quantization_config(quantize, torch_dtype)
            if qconfig is not None:
                common["quantization_config"] = qconfig
            if device_map is not None:
                # Layers spread over the visible GPUs by accelerate (a model larger than one GPU).
                common["device_map"] = device_map
            elif qconfig is not None:
                common["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=attn_implementation, **common)
            _check(cancel)
            if quantize in BITS:
                # Loaded on the host (or spread by the device map), each weight is packed on its
                # device in turn: the GPU never holds the full-width weights.
                quantize_linears(model, BITS[quantize], dev)
                _check(cancel)
            if "device_map" not in common:
                model = model.to(dev)
            dev = model.get_input_embeddings().weight.device
    except (ModelLoadError, InvalidRequestError, LoadCancelledError):
        raise
    except Exception as exc:  # transformers raises many types (OSError, ValueError, KeyError...)
        raise ModelLoadError(f"could not load model {source}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return LoadedModel(model, tokenizer, dev, chosen_task, is_demo_model(source))
