"""What the server says about itself: its models (``GET /v1/models``) and its health (``GET /health``)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class ModelCard(Struct, kw_only=True):
    """A served model.  ``random_weights`` marks demo models whose output is gibberish."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str
    max_model_len: int
    state: str
    random_weights: bool


class ModelList(Struct, kw_only=True):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthStatus(Struct, kw_only=True):
    """Response of ``GET /health`` when the engine is ready."""

    status: Literal["ok"] = "ok"
