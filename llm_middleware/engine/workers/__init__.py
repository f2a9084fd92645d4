"""The threads that serve one model each: the generation step loop and its parts, the embedding worker."""
