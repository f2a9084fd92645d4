"""FastAPI: a dependency that hands views the engine, and the API's operations in the app's own docs.

```python
app = FastAPI()
app.add_middleware(LLMMiddleware, base_path="/ai", model="Qwen/Qwen3-4B")
publish_openapi(app)                       # optional: /ai/... in FastAPI's /docs and /openapi.json

@app.post("/summarize")
async def summarize(text: str, engine: LLMEngine) -> dict[str, str]:
    return {"summary": (await engine.chat([{"role": "user", "content": text}])).choices[0].text}
```
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.requests import HTTPConnection

from ..engine.interface import EngineAPI
from .openapi import merge_openapi
from .starlette import llm_middleware_of


def llm_engine(connection: HTTPConnection) -> EngineAPI:
    """The engine of the app's ``LLMMiddleware``, for views: ``engine: LLMEngine`` in their parameters."""
    return llm_middleware_of(connection.app).engine


#: A view parameter annotated ``LLMEngine`` receives the engine the middleware serves.
LLMEngine = Annotated[EngineAPI, Depends(llm_engine)]


def publish_openapi(app: FastAPI) -> None:
    """List the API's operations (under the middleware's base path, tagged ``LLM API``) in ``app.openapi()``,
    and so in FastAPI's own ``/openapi.json`` and ``/docs``.  The app's own part is regenerated as FastAPI
    decides; the API's part is added to each new version."""
    host_openapi = app.openapi
    cached: list[dict[str, Any]] = []  # the host's document last seen, and the merged one

    def openapi() -> dict[str, Any]:
        host = host_openapi()
        if not cached or cached[0] is not host:
            middleware = llm_middleware_of(app)
            cached[:] = [host, merge_openapi(host, middleware.endpoint.openapi(), middleware.base_path)]
        return cached[1]

    app.openapi = openapi  # type: ignore[method-assign]
