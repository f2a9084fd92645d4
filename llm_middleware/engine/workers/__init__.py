"""The threads that serve one model each: generation and embedding workers and their delivery."""
