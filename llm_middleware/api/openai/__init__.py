"""OpenAI's protocol: chat and text completions, embeddings, models, tokenize and health, with their wire types."""
