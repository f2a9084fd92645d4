"""Framework-specific ways to mount the LLM API (each imports its framework lazily)."""
