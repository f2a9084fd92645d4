"""The shared inference engine: continuous batching over transformers models."""

from .engine import Engine
from .outputs import Choice, Completion, Delta, Embeddings, ModelInfo, TokenLogprob, TopLogprob, Usage
from .sampling_params import SamplingParams

__all__ = [
    "Choice", "Completion", "Delta", "Embeddings", "Engine", "ModelInfo", "SamplingParams", "TokenLogprob",
    "TopLogprob", "Usage",
]
