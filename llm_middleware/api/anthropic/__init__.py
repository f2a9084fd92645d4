"""Anthropic's Messages API over the conversation core."""
