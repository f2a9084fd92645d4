"""Text in and out of a model: chat rendering, detokenization, token bytes, plain-JSON checks."""
