"""Give any WSGI or ASGI app its own OpenAI-compatible LLM API under a path prefix.

```python
from llm_middleware import LLMMiddleware
app = LLMMiddleware(app, base_path="/ai", model="Qwen/Qwen3-4B", quantize="4bit")
```
"""

from typing import Any

from .demo_model import build_demo_model, demo_model_path
from .engine import (
    Choice,
    Completion,
    Delta,
    Embeddings,
    Engine,
    ModelInfo,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from .errors import (
    ContextLengthExceededError,
    EngineNotReadyError,
    EngineOverloadedError,
    EngineStepError,
    InvalidRequestError,
    LLMError,
    ModelNotFoundError,
)
from .middleware import LLMMiddleware
from .remote import RemoteEngine
from .request_info import RequestInfo
from .tools import MCPServer, Tool, ToolError, ToolInvocation, tool

__all__ = [
    "Choice", "Completion", "ContextLengthExceededError", "Delta", "Embeddings", "Engine", "EngineNotReadyError",
    "EngineOverloadedError", "EngineStepError", "InvalidRequestError", "LLMError", "LLMMiddleware", "LLMPlugin",
    "MCPServer", "ModelInfo", "ModelNotFoundError", "RemoteEngine", "RequestInfo", "SamplingParams", "Tool", "ToolError",
    "ToolInvocation", "TokenLogprob", "TopLogprob", "Usage",
    "build_demo_model", "demo_model_path", "tool",
]


def __getattr__(name: str) -> Any:
    if name == "LLMPlugin":  # litestar is optional: import it only when asked for
        from .integrations.litestar import LLMPlugin

        return LLMPlugin
    raise AttributeError(f"module 'llm_middleware' has no attribute {name!r}")
