"""Text in and out of a model: messages and chat rendering, prompt encoding, detokenization, token bytes."""
