"""A FastAPI app with its own routes and an OpenAI-compatible API under ``/ai``.

Run it with ``uvicorn examples.fastapi.app:app`` (or ``hypercorn examples.fastapi.app:app``).
``app.add_middleware`` puts the middleware in FastAPI's own stack, so the engine starts in lifespan
before the app's startup code runs; the ``LLMEngine`` dependency hands views the engine;
``publish_openapi`` lists the API in FastAPI's ``/docs``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel

from examples._model import model_path, summary_messages
from llm_middleware import LLMMiddleware
from llm_middleware.integrations.fastapi import LLMEngine, publish_openapi
from llm_middleware.integrations.starlette import llm_middleware_of

logger = logging.getLogger("examples")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The middleware's lifespan startup ran first: the engine is loading (or loaded) already.
    engine = llm_middleware_of(app).engine
    logger.info("LLM engine %s: %s", engine.state, ", ".join(model.name for model in engine.models()))
    yield


app = FastAPI(title="FastAPI shop", lifespan=lifespan)
app.add_middleware(LLMMiddleware, base_path="/ai", model=model_path())
publish_openapi(app)


class Text(BaseModel):
    text: str


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """A page of the host app, untouched by the middleware."""
    return (
        "<h1>FastAPI shop</h1>"
        '<p>The LLM API lives under <a href="/docs">/docs</a> with the app\'s own routes; '
        "try <code>POST /summarize</code>.</p>"
    )


@app.post("/summarize")
async def summarize(body: Text, engine: LLMEngine) -> dict[str, str]:
    """Summarize ``{"text": ...}`` with the shared engine."""
    completion = await engine.chat(summary_messages(body.text), max_tokens=48)
    return {"summary": completion.choices[0].text}


@app.get("/countdown")
def countdown() -> StreamingResponse:
    """A streamed response of the host app, to show that streaming passes through."""

    def lines() -> Iterator[str]:
        for n in range(3, 0, -1):
            yield f"{n}\n"

    return StreamingResponse(lines(), media_type="text/plain")
