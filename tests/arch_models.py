"""Tiny random-weight models whose attention departs from plain causal softmax attention.

Mistral with a sliding window, Gemma 2 (interleaved local and global layers, soft-capped
attention scores, its own query scale), Gemma 3 text (local layers around a global one, its own
query scale and rotary bases) and gpt-oss (attention sinks, local layers).  The weights are
drawn large (``initializer_range`` 0.5) so that the greedy output depends on which tokens each
layer sees: tests check that it changes when a feature is switched off, so an engine that
ignored the feature could not match ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from llm_middleware.demo_model import SPECIAL_TOKENS, _train_tokenizer

Arch = Literal["mistral", "gemma2", "gemma3", "gpt_oss"]
ARCHS: tuple[Arch, ...] = ("mistral", "gemma2", "gemma3", "gpt_oss")

#: Every windowed layer of these models sees its own token and the 15 before it.
WINDOW = 16

_SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              initializer_range=0.5, max_position_embeddings=512)
_VOCAB = 512


def _config(arch: Arch, vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import Gemma2Config, Gemma3TextConfig, GptOssConfig, MistralConfig

    common: dict[str, Any] = dict(_SHAPE, vocab_size=vocab_size, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                                  pad_token_id=ids["<|endoftext|>"], sliding_window=WINDOW)
    if arch == "mistral":
        return MistralConfig(num_hidden_layers=2, tie_word_embeddings=True, **common)
    # Gemma's output layer tied to its scaled embeddings picks one token whatever the context.
    if arch == "gemma2":
        # A query scale other than the head dimension's, and a cap low enough to bend the scores.
        return Gemma2Config(num_hidden_layers=2, query_pre_attn_scalar=24, attn_logit_softcapping=4.0,
                            final_logit_softcapping=30.0, tie_word_embeddings=False, **common)
    if arch == "gemma3":
        return Gemma3TextConfig(num_hidden_layers=3, query_pre_attn_scalar=24,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                tie_word_embeddings=False, **common)
    return GptOssConfig(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)


def _save(path: Path, config: Any, vocab: int, adjust: Callable[[Any], None] | None = None, *, seed: int = 0) -> Path:
    """A random-weight model of ``config`` (given the tokenizer's special-token ids) and a BPE tokenizer, saved."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = _train_tokenizer(vocab)
    tokenizer.add_tokens([f"<w{i}>" for i in range(vocab - len(tokenizer))])  # filler words up to the full size
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(len(tokenizer), ids), dtype=torch.float32)
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _large_sinks(model: Any) -> None:
    for layer in model.model.layers:  # sinks as large as the scores, so that they take a share worth noticing
        layer.self_attn.sinks.normal_(0.0, 4.0)


def build_arch_model(path: Path, arch: Arch, *, seed: int = 0) -> Path:
    """Build a tiny random-weight ``arch`` model with a BPE tokenizer and save it to ``path``."""
    return _save(path, lambda vocab, ids: _config(arch, vocab, ids), _VOCAB,
                 _large_sinks if arch == "gpt_oss" else None, seed=seed)


def _unsupported_config(kind: str, vocab: int, ids: dict[str, int]) -> Any:
    from transformers import Gemma3TextConfig, Lfm2Config, Llama4TextConfig

    common: dict[str, Any] = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                  intermediate_size=128, vocab_size=vocab, bos_token_id=None,
                                  eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if kind == "chunked":
        return Llama4TextConfig(attention_chunk_size=8, intermediate_size_mlp=128, head_dim=16, **common)
    if kind == "bidirectional":
        return Gemma3TextConfig(use_bidirectional_attention=True, head_dim=16, **common)
    return Lfm2Config(layer_types=["conv", "full_attention"], **common)  # a convolution layer, then attention


#: Models whose attention the engine does not compute, and the feature its refusal names.
UNSUPPORTED = {"chunked": "chunked attention", "bidirectional": "bidirectional attention",
               "convolution": "layers that do not call the attention function"}


def build_unsupported_model(path: Path, kind: str) -> Path:
    """Build a tiny model of ``UNSUPPORTED[kind]``'s kind and save it to ``path``."""
    return _save(path, lambda vocab, ids: _unsupported_config(kind, vocab, ids), _VOCAB)


def load_reference(path: Path, **overrides: Any) -> Any:
    """``path``'s model as transformers runs it (float32, CPU, eager attention: the reference kernels that
    compute soft-capping and sinks on every device), its config changed by ``overrides``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    for name, value in overrides.items():
        setattr(config, name, value)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def greedy(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    """``n`` tokens of ``model.generate`` greedily after ``prompt_ids`` (eos ignored)."""
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt_ids], device=device), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def _without_sinks(path: Path) -> Any:
    model = load_reference(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(float("-inf"))  # a sink that takes no share
    return model


#: Each architecture's model with one feature switched off (a window longer than any context: no window).
ABLATIONS: dict[Arch, dict[str, Callable[[Path], Any]]] = {
    "mistral": {"sliding window": lambda p: load_reference(p, sliding_window=4096)},
    "gemma2": {"sliding window": lambda p: load_reference(p, sliding_window=4096),
               "soft-capping": lambda p: load_reference(p, attn_logit_softcapping=None),
               "query scale": lambda p: load_reference(p, query_pre_attn_scalar=16)},
    "gemma3": {"sliding window": lambda p: load_reference(p, sliding_window=4096),
               "query scale": lambda p: load_reference(p, query_pre_attn_scalar=16)},
    "gpt_oss": {"sliding window": lambda p: load_reference(p, sliding_window=4096), "sinks": _without_sinks},
}
