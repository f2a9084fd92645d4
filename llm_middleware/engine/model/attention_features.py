"""What each layer's attention asks for, read from the model itself before the engine serves it.

transformers' attention modules pass what they need to the attention function as keyword
arguments (``sliding_window``, ``softcap``, ``s_aux`` for sinks, ``scaling``) and leave the
rest to the mask that the model builds for the attention implementation in use; for ours it
builds none.  So one probe forward through the model records every layer's call: the engine
computes sliding windows, soft-capping, sinks and the model's own query scale
(``attention.paged.AttentionVariant``); anything else that a call carries or a config asks for
(chunked or bidirectional attention, a mask of its own, layers that never call the attention
function) refuses the model with an error that names it, rather than serving text that
``generate`` would not write.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..attention.paged import AttentionVariant, variant_of_call
from .loader import ModelLoadError

# Keyword arguments of a layer's call that the engine computes or that carry no attention feature
# (``scaling`` and ``dropout`` are parameters of their own; flags left off, False or None, are ignored).
_UNDERSTOOD = frozenset({"llm_attention", "sliding_window", "softcap", "s_aux", "is_causal", "position_ids",
                         "cache_position"})
# Layer types (``config.layer_types``) whose attention is the engine's.
_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
# Config fields that change the mask a model builds (which it builds for none of our calls).
_MASK_FIELDS = {
    "attention_chunk_size": "chunked attention",
    "use_bidirectional_attention": "bidirectional attention",
}


class UnsupportedAttentionError(ModelLoadError):
    """The model's attention needs a feature that the engine does not compute; the message names it."""


class _Recorder:
    """Stands in for a step's metadata during the probe: records each layer's call and attends causally."""

    def __init__(self) -> None:
        self.calls: dict[int, list[tuple[dict[str, Any], bool]]] = {}
        self.refused: dict[str, list[int]] = {}

    def record(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None, kwargs: dict[str, Any]) -> torch.Tensor:
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int):
            self.refused.setdefault(f"attention modules without a layer index ({type(module).__name__})", [])
        else:
            self.calls.setdefault(layer, []).append((kwargs, attention_mask is not None))
            if getattr(module, "is_causal", True) is False:
                self.refused.setdefault("bidirectional attention", []).append(layer)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2)


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_refusals(config: Any) -> dict[str, list[str]]:
    """The features a config asks for through the mask (which none of our calls gets), with the field that says so."""
    refused = {feature: [f"{name}={getattr(config, name)!r}"] for name, feature in _MASK_FIELDS.items()
               if getattr(config, name, None)}
    for kind in sorted(set(getattr(config, "layer_types", None) or []) - _LAYER_TYPES):
        refused[f"layers of type {kind!r}"] = []
    return refused


def _call_refusals(kwargs: dict[str, Any], masked: bool, calls: int) -> list[str]:
    """The features one layer's call asks for that the engine does not compute."""
    refused = [f"the attention argument {name!r}" for name, value in kwargs.items()
               if name not in _UNDERSTOOD and value is not None and value is not False]  # False: a flag left off
    if masked:
        refused.append("an attention mask of its own")
    if kwargs.get("is_causal") is False:
        refused.append("bidirectional attention")
    window = kwargs.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < 1):
        refused.append(f"a sliding window of {window!r}")
    sinks = kwargs.get("s_aux")
    if sinks is not None and (not isinstance(sinks, torch.Tensor) or sinks.dim() != 1):
        refused.append("attention sinks other than one logit per head")
    if calls != 1:
        refused.append("more than one attention call a step")
    return refused


@torch.inference_mode()
def read_variants(model: Any) -> dict[int, AttentionVariant]:
    """Each layer's ``AttentionVariant``, from one probe forward of ``model`` (loaded with our attention).

    Raises :class:`UnsupportedAttentionError` naming every feature that the engine does not compute.
    """
    config = _text_config(model)
    recorder = _Recorder()
    device = model.get_input_embeddings().weight.device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    try:
        model(input_ids=ids, position_ids=torch.arange(2, device=device)[None], use_cache=False, logits_to_keep=1,
              llm_attention=recorder)
    except Exception as exc:  # noqa: BLE001 - a forward that fails here would fail every request
        raise UnsupportedAttentionError(
            f"the forward of {type(model).__name__} failed on a two-token probe: {type(exc).__name__}: {exc}"
        ) from exc
    refused = _config_refusals(config)
    layers_of: dict[str, list[int]] = recorder.refused
    variants: dict[int, AttentionVariant] = {}
    for layer, calls in sorted(recorder.calls.items()):
        kwargs, masked = calls[0]
        for feature in _call_refusals(kwargs, masked, len(calls)):
            layers_of.setdefault(feature, []).append(layer)
        variants[layer] = variant_of_call(kwargs)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and (silent := sorted(set(range(layers)) - set(recorder.calls))):
        layers_of["layers that do not call the attention function"] = silent
    for feature, where in layers_of.items():
        details = refused.setdefault(feature, [])
        if where:
            details.append(f"layers {', '.join(map(str, sorted(set(where))))}")
    if refused:
        named = [f"{feature} ({'; '.join(details)})" if details else feature for feature, details in refused.items()]
        raise UnsupportedAttentionError(
            f"this engine does not compute the attention of {type(model).__name__}: it needs {'; '.join(named)}"
        )
    return variants
