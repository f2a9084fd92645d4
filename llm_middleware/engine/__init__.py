"""The shared inference engine: continuous batching over transformers models."""
