"""What the engine reads of a generative model's configs: context, special tokens, sampling defaults, shapes, devices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import ModelConfig

# Sampling fields a model's generation config may set defaults for.
_DEFAULTABLE = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class ModelProperties:
    """A loaded model's facts, read once (call :meth:`read` before the model's modules are replaced)."""

    max_model_len: int
    eos_ids: list[int]
    pad_id: int
    defaults: dict[str, Any]  # sampling defaults from the generation config
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype  # of the activations (the first floating-point parameter's)
    layer_devices: list[torch.device]  # where each decoder layer (and its KV cache) lives
    output_device: torch.device  # where the logits are: the output layer's device
    logits_width: int

    @classmethod
    def read(cls, model: Any, tokenizer: Any, config: ModelConfig, device: torch.device) -> ModelProperties:
        """The facts of ``model`` (loaded on ``device``, or spread by a ``device_map``), capped by ``config``."""
        hf_config = model.config
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        context = getattr(text, "max_position_embeddings", None) or 4096
        gen = model.generation_config
        eos_ids = sorted(_eos_ids(gen, tokenizer))
        pad_id = next((i for i in (getattr(gen, "pad_token_id", None), tokenizer.pad_token_id, *eos_ids) if i is not None), 0)
        output = model.get_output_embeddings()
        # A packed output layer holds buffers rather than a weight.
        where = next(output.parameters(), None)
        where = where if where is not None else next(output.buffers())
        return cls(
            max_model_len=min(context, config.max_model_len or context),
            eos_ids=eos_ids,
            pad_id=pad_id,
            defaults=_sampling_defaults(gen),
            num_layers=text.num_hidden_layers,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            dtype=_activation_dtype(model),
            layer_devices=_layer_devices(model, text.num_hidden_layers, device),
            output_device=where.device,
            logits_width=output.out_features if hasattr(output, "out_features") else output.weight.shape[0],
        )


def _eos_ids(gen: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


def _sampling_defaults(gen: Any) -> dict[str, Any]:
    explicit = gen.to_diff_dict() if hasattr(gen, "to_diff_dict") else {}
    if not explicit.get("do_sample", False):
        return {"temperature": 0.0}
    defaults = {k: explicit[k] for k in _DEFAULTABLE if explicit.get(k) is not None}
    defaults.setdefault("temperature", 1.0)
    return defaults


def _activation_dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def _layer_devices(model: Any, num_layers: int, default: torch.device) -> list[torch.device]:
    """The device of each decoder layer (one device unless loaded with a ``device_map``)."""
    devices = [default] * num_layers
    for module in model.modules():
        layer = getattr(module, "layer_idx", None)
        weight = getattr(getattr(module, "k_proj", None), "weight", None)
        if isinstance(layer, int) and weight is not None and 0 <= layer < num_layers:
            devices[layer] = weight.device
    return devices
