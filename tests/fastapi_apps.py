"""The FastAPI example as the server tests serve it: with ``/stats``, and ``/startup`` telling the
engine's state when the app's own lifespan startup ran."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from examples.fastapi.app import app, lifespan
from llm_middleware.integrations.starlette import llm_middleware_of
from step_stats import Stats

engine = llm_middleware_of(app).engine
engine_stats = Stats(engine)
state_at_startup: list[str] = []


@asynccontextmanager
async def recorded_lifespan(app: FastAPI) -> AsyncIterator[None]:
    state_at_startup.append(engine.state)
    async with lifespan(app):
        yield


app.router.lifespan_context = recorded_lifespan
app.add_api_route("/stats", engine_stats, include_in_schema=False)
app.add_api_route("/startup", lambda: {"engine": state_at_startup}, include_in_schema=False)
