"""Random-weight models of real architectures, built locally for demos, tests and benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a small
built-in corpus, the weights are random, and the result is saved with ``save_pretrained``
so that it loads through the same ``from_pretrained`` path as a hub model.  The text such a
model writes is gibberish; its mechanics (shapes, rotary positions, GQA, the chat template,
eos handling) are those of the real architecture.

The weights are large enough that each next token depends on the context: with transformers'
default initialisation (a standard deviation of 0.02) every layer adds next to nothing to the
token's own embedding, and greedy decoding repeats one token whatever came before it, so a
broken attention, KV cache or prompt chunking would still give the right answer.  The
tokenizer is as awkward as real ones: multi-byte characters span several tokens, and the
tool-call and thinking markers are special tokens (as in Hermes-2-Pro), which decoding with
special tokens skipped drops.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger("llm_middleware")

Arch = Literal["qwen3", "llama"]
Size = Literal["tiny", "small", "4b"]

#: Marker file written next to the weights; the engine reports such models as random weights.
DEMO_MARKER = "llm_middleware_demo.json"
# Part of the cached demo's folder name: a change of how demo models are built gets a fresh build.
_BUILD_VERSION = 2

# ChatML, as Qwen templates render it, including Hermes-style tool definitions and calls.
_CONVERSATION_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}"
    "{% elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% elif message.role == 'assistant' %}"
    "<|im_start|>assistant\n{% if message.content %}{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls or [] %}"
    "{% set fn = call.function if call.function is defined else call %}"
    '\n<tool_call>\n{"name": "{{ fn.name }}", "arguments": '
    "{{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
)

#: Qwen3's original template: the model may open a ``<think>`` block itself; ``enable_thinking=false``
#: renders an empty one, which it then answers after.
CHAT_TEMPLATE = _CONVERSATION_TEMPLATE + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

#: A template that thinks (as Qwen3-2507 Thinking and Qwen3.5 do): the reply begins inside an open
#: ``<think>`` block unless ``enable_thinking=false`` renders an empty, closed one.
THINKING_CHAT_TEMPLATE = _CONVERSATION_TEMPLATE + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}"
    "{% endif %}"
)

# Weights have a standard deviation of WEIGHT_GAIN / sqrt(hidden_size) (0.375 for the tiny shape): each
# product then scales its input's size by about WEIGHT_GAIN, so attention and MLP outputs outweigh the
# token's embedding in the residual stream and greedy output follows the context, in every size.  A
# larger gain amplifies roundings from layer to layer until bfloat16 results of two summation orders
# part ways; a smaller one brings back answers that repeat a few tokens.
WEIGHT_GAIN = 3.0
# Attention scores (q·k / sqrt(d)) would have a standard deviation of about WEIGHT_GAIN ** 2 where queries
# and keys are not normed (Llama): each query would pick one key, and one rounding in a key another.
# Queries and keys are scaled down to scores of a few units, as in trained models (and as Qwen3's
# per-head norms keep them).
QK_SCALE = 0.5
# Random init gives nearly uniform next-token distributions; a larger output scale makes them peaked
# enough for greedy near-ties to be rare, yet still varied under sampling.
OUTPUT_SCALE = 3.0

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

# A small multilingual corpus so that the BPE learns merges across scripts, and
# multi-byte characters (accents, CJK, emoji) are split over several tokens.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "Large language models generate text one token at a time.",
    "Le café est très bon à Paris, où il fait beau en été.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。今日はいい天気ですね。",
    "你好，世界！我们今天学习语言模型。",
    "Emoji test: 🚀 🌍 😀 👍🏽 — and some symbols: € ± ∞ ≠.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 -42 true false null",
    "SELECT name, price FROM products WHERE price > 10 ORDER BY name;",
    "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"query\": \"llm\"}}\n</tool_call>",
]

_SIZES: dict[str, dict[str, int]] = {
    # A few hundred thousand parameters: fast enough for every unit test on two cores.
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=512,
    ),
    # About 24M parameters: the CPU benchmark shape, and the default demo model.
    "small": dict(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, vocab_size=1024,
    ),
    # The shape of Qwen3-4B (about 4B parameters): for GPU benchmarks only.
    "4b": dict(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936,
    ),
}


def _train_tokenizer(vocab_size: int, special_markers: bool = True, thinking: bool = False) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(MARKER_TOKENS),
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:] + (MARKER_TOKENS if special_markers else []),
    )
    if not special_markers:
        fast.add_tokens(MARKER_TOKENS)
    fast.chat_template = THINKING_CHAT_TEMPLATE if thinking else CHAT_TEMPLATE
    return fast


def build_demo_model(
    path: str | os.PathLike[str],
    *,
    arch: Arch = "qwen3",
    size: Size = "tiny",
    seed: int = 0,
    max_position_embeddings: int = 2048,
    device: str = "cpu",
    dtype: str = "float32",
    special_markers: bool = True,
    thinking: bool = False,
    **config_overrides: Any,
) -> Path:
    """Build a random-weight causal LM of ``arch`` and save it (model, tokenizer, template) to ``path``.

    ``config_overrides`` replace fields of the architecture's config (for example
    ``num_hidden_layers``, or ``initializer_range``, the weights' standard deviation, by default
    ``WEIGHT_GAIN / sqrt(hidden_size)``).  ``device`` and ``dtype`` say where the random weights
    are made and how they are saved (a GPU initialises a multi-billion-parameter model in
    seconds).  ``special_markers=False`` registers the tool-call and thinking markers as plain
    added tokens instead of special ones.  ``thinking=True`` saves a template that thinks
    (:data:`THINKING_CHAT_TEMPLATE`) instead of Qwen3's original (:data:`CHAT_TEMPLATE`).  Returns
    the directory, ready for ``Engine(path)``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape: dict[str, Any] = dict(_SIZES[size])
    shape.update(config_overrides)
    shape.setdefault("initializer_range", WEIGHT_GAIN / math.sqrt(shape["hidden_size"]))
    tokenizer = _train_tokenizer(shape["vocab_size"], special_markers, thinking)
    # The BPE stops merging when the small corpus runs out; filler words take the remaining ids,
    # so that the vocabulary has its real size (memory and speed depend on it) and every token
    # the model can sample decodes to text.
    tokenizer.add_tokens([f"<w{i}>" for i in range(shape["vocab_size"] - len(tokenizer))])
    shape["vocab_size"] = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    common = dict(
        max_position_embeddings=max_position_embeddings,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(seed)
    if arch not in ("qwen3", "llama"):
        raise ValueError(f"unknown demo architecture {arch!r}; choose 'qwen3' or 'llama'")
    with torch.device(device):
        if arch == "qwen3":
            model = Qwen3ForCausalLM(Qwen3Config(rope_theta=1_000_000.0, **common))
        else:
            model = LlamaForCausalLM(LlamaConfig(**common))
    model = model.to(getattr(torch, dtype))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(OUTPUT_SCALE)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(QK_SCALE)
            layer.self_attn.k_proj.weight.mul_(QK_SCALE)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    # Saved from the CPU: saving straight from the GPU left a copy of the layers' weights cached there.
    model = model.to("cpu")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / DEMO_MARKER).write_text(json.dumps({"arch": arch, "size": size, "seed": seed, "random_weights": True}))
    if torch.device(device).type == "cuda":
        # The weights made on the GPU stay in PyTorch's allocator cache otherwise, and an engine
        # sizing its KV cache from the GPU's free memory (in this process or another) would lose that much.
        gc.collect()
        torch.cuda.empty_cache()
    return out


def demo_model_path(*, arch: Arch = "qwen3", size: Size = "small", cache_dir: str | None = None) -> Path:
    """Return the cached demo model directory, building it on first use.

    The cache lives in ``$LLM_MIDDLEWARE_CACHE`` or ``~/.cache/llm_middleware``.
    """
    root = Path(cache_dir or os.environ.get("LLM_MIDDLEWARE_CACHE") or Path.home() / ".cache" / "llm_middleware")
    path = root / f"demo-{arch}-{size}-v{_BUILD_VERSION}"
    if not (path / DEMO_MARKER).exists():
        logger.warning("building a random-weight demo model (%s, %s) at %s: its output is gibberish", arch, size, path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        build_demo_model(tmp, arch=arch, size=size)
        try:
            tmp.replace(path)
        except OSError:  # another process finished first: keep its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_demo_model(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory written by :func:`build_demo_model` (random weights)."""
    return (Path(path) / DEMO_MARKER).is_file()
