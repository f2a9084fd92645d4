"""Request fields -> the engine's sampling keyword options (for any protocol whose fields carry the engine's names)."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidRequestError

# Seeds become 64-bit generator seeds (one per choice: seed, seed + 1, ...).
_SEED_RANGE = (-(2**63), 2**63 - 1)

# Fields whose request name and meaning equal the engine's; None means "model default".
_PASSED_AS_IS = (
    "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
)


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """Token ids arrive as JSON object keys, so strings; the engine wants ints."""
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        bad = next(token for token in bias if not token.strip().lstrip("-").isdigit())
        raise InvalidRequestError(
            f"Invalid key '{bad}' in 'logit_bias': keys must be token ids (integers).", param="logit_bias"
        ) from None


def sampling_options(request: object, *, max_tokens: int | None) -> dict[str, Any]:
    """The engine's sampling options from the fields of ``request`` named as the engine names them
    (``temperature``, ``top_p``, ``seed``, ``logit_bias``, ...); fields it lacks or leaves None keep
    the model's defaults."""
    options: dict[str, Any] = {
        name: value for name in _PASSED_AS_IS if (value := getattr(request, name, None)) is not None
    }
    seed = options.get("seed")
    if seed is not None and not (_SEED_RANGE[0] <= seed <= _SEED_RANGE[1]):
        raise InvalidRequestError(
            f"'seed' must be a 64-bit signed integer ({_SEED_RANGE[0]}..{_SEED_RANGE[1]}), got {seed}.", param="seed"
        )
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if logit_bias := getattr(request, "logit_bias", None):
        options["logit_bias"] = _logit_bias(logit_bias)
    return options
