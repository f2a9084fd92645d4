"""Loading and running a model: loader, runner, decoders, the KV cache's size, memory footprint."""
