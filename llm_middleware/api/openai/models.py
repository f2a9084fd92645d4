"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...engine.outputs import ModelInfo
from ...errors import ModelNotFoundError
from ..core.http import Request, Response
from ..core.responses import json_response
from .types.server import ModelCard, ModelList

if TYPE_CHECKING:
    from ...engine.engine import Engine

#: The path prefix of the single-model route; what follows it is the model id (ids may hold slashes).
MODEL_PREFIX = "/v1/models/"

OWNER = "llm_middleware"
# Random-weight demo models are labelled in ``owned_by`` too, where every client shows it.
DEMO_OWNER = "llm_middleware-demo"


def model_card(info: ModelInfo) -> ModelCard:
    """How one model is listed."""
    return ModelCard(
        id=info.name,
        created=info.created,
        owned_by=DEMO_OWNER if info.random_weights else OWNER,
        task=info.task,
        max_model_len=info.max_model_len,
        state=info.state,
        random_weights=info.random_weights,
    )


async def list_models(engine: Engine, request: Request, request_id: str) -> Response:
    """Every served model, loaded or not."""
    return json_response(ModelList(data=[model_card(info) for info in engine.models()]))


async def retrieve_model(engine: Engine, request: Request, request_id: str) -> Response:
    """One model by id (the path after ``/v1/models/``); 404 ``model_not_found`` listing the served ids."""
    model_id = request.path[len(MODEL_PREFIX) :]
    infos = engine.models()
    available = ", ".join(info.name for info in infos) or "none"
    if not model_id:
        raise ModelNotFoundError(f"Give a model id after {MODEL_PREFIX}; available models: {available}", param="model")
    for info in infos:
        if info.name == model_id:
            return json_response(model_card(info))
    raise ModelNotFoundError(f"The model '{model_id}' does not exist; available models: {available}", param="model")
