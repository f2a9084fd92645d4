"""How many KV-cache blocks a model gets: a share of the free GPU memory, or a byte budget on the CPU."""

from __future__ import annotations

import logging

import torch

from ..attention.kv_cache import KVCache
from ..config import ModelConfig
from .properties import ModelProperties

logger = logging.getLogger("llm_middleware")


def build_kv_cache(props: ModelProperties, config: ModelConfig) -> KVCache:
    """The model's KV cache, sized by :func:`num_kv_blocks` (allocate it once the weights are in place)."""
    return KVCache(
        num_layers=props.num_layers,
        num_blocks=num_kv_blocks(props, config),
        block_size=config.block_size,
        num_kv_heads=props.num_kv_heads,
        head_dim=props.head_dim,
        dtype=props.dtype,
        devices=props.layer_devices,
    )


def num_kv_blocks(props: ModelProperties, config: ModelConfig) -> int:
    """``kv_cache_blocks`` if set; else on CUDA ``kv_cache_memory_fraction`` of each device's free memory, and
    on the CPU enough for ``max_batch_size`` full contexts within ``cpu_kv_cache_bytes``; at least one context."""
    devices = props.layer_devices
    if config.kv_cache_blocks is not None:
        blocks = config.kv_cache_blocks
    else:
        # One layer's share: each device holds the blocks of its own layers.
        per_token = KVCache.bytes_per_token(num_layers=1, num_kv_heads=props.num_kv_heads, head_dim=props.head_dim,
                                            dtype=props.dtype)
        if devices[0].type == "cuda":
            blocks = min(
                int(torch.cuda.mem_get_info(d)[0] * config.kv_cache_memory_fraction)
                // (per_token * devices.count(d) * config.block_size)
                for d in set(devices)
            )
        else:
            wanted = config.max_batch_size * props.max_model_len * per_token * len(devices)
            budget = min(wanted, config.cpu_kv_cache_bytes)
            blocks = budget // (per_token * len(devices) * config.block_size)
    minimum = -(-props.max_model_len // config.block_size)
    if blocks < minimum:
        logger.warning(
            "KV cache of %d blocks cannot hold one full context of %d tokens; using %d blocks",
            blocks, props.max_model_len, minimum,
        )
        blocks = minimum
    return blocks
