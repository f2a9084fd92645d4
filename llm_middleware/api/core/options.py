"""Request fields -> the engine's sampling keyword options."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidRequestError
from ..openai.schemas import SamplingFields

# Seeds become 64-bit generator seeds (one per choice: seed, seed + 1, ...).
_SEED_RANGE = (-(2**63), 2**63 - 1)

# Fields whose request name and meaning equal the engine's; None means "model default".
_PASSED_AS_IS = (
    "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
)


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """OpenAI sends token ids as JSON object keys, so strings; the engine wants ints."""
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        bad = next(token for token in bias if not token.strip().lstrip("-").isdigit())
        raise InvalidRequestError(
            f"Invalid key '{bad}' in 'logit_bias': keys must be token ids (integers).", param="logit_bias"
        ) from None


def sampling_options(request: SamplingFields, *, max_tokens: int | None) -> dict[str, Any]:
    """The engine's sampling options for ``request``; fields left out keep the model's defaults."""
    options: dict[str, Any] = {name: value for name in _PASSED_AS_IS if (value := getattr(request, name)) is not None}
    if request.seed is not None and not (_SEED_RANGE[0] <= request.seed <= _SEED_RANGE[1]):
        raise InvalidRequestError(
            f"'seed' must be a 64-bit signed integer ({_SEED_RANGE[0]}..{_SEED_RANGE[1]}), got {request.seed}.",
            param="seed",
        )
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if request.logit_bias:
        options["logit_bias"] = _logit_bias(request.logit_bias)
    return options
