"""Loading a model and making it ready to run: its facts, the KV cache's size, the runner and its decoders."""
