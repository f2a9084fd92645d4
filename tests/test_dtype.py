"""Which dtype ``dtype="auto"`` loads a model in: the checkpoint's on CUDA, on a CPU float32 unless AMX runs bfloat16."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine_state import default_worker
from llm_middleware.demo_model import build_demo_model
from llm_middleware.engine import Engine
from llm_middleware.engine.model import loader


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("qwen3-bf16"), arch="qwen3", size="tiny", dtype="bfloat16")


@pytest.fixture(params=[True, False], ids=["amx", "no-amx"])
def amx(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(loader, "_has_amx", lambda: request.param)
    return request.param


def test_auto_on_a_cpu_is_bfloat16_only_for_a_bfloat16_checkpoint_with_amx(amx: bool, bf16_dir: Path,
                                                                          tiny_model_dir: Path) -> None:
    cpu = torch.device("cpu")
    assert loader.resolve_dtype("auto", cpu, str(bf16_dir)) == (torch.bfloat16 if amx else torch.float32)
    assert loader.resolve_dtype("auto", cpu, str(tiny_model_dir)) == torch.float32  # a float32 checkpoint stays so
    assert loader.resolve_dtype("auto", cpu, str(bf16_dir.parent / "missing")) == torch.float32
    assert loader.resolve_dtype("float32", cpu, str(bf16_dir)) == torch.float32  # an explicit dtype is kept
    assert loader.resolve_dtype("auto", torch.device("cuda"), str(bf16_dir)) == "auto"


def test_the_engine_loads_a_bfloat16_checkpoint_as_bfloat16_with_amx(amx: bool, bf16_dir: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "llm_middleware"):
        eng = Engine(bf16_dir, seed=0)
        try:
            eng.wait_ready_sync()
            expected = torch.bfloat16 if amx else torch.float32
            assert default_worker(eng).model.get_input_embeddings().weight.dtype == expected
            assert default_worker(eng).kv_cache.keys[0].dtype == expected
        finally:
            eng.shutdown()
    assert f"dtype=auto: {'bfloat16' if amx else 'float32'}" in caplog.text
