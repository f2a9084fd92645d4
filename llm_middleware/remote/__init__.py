"""Serve the API from a fleet of OpenAI-compatible servers instead of the in-process engine.

```python
from llm_middleware import LLMMiddleware, RemoteEngine
engine = RemoteEngine(["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"], model_map={"chat": "Qwen/Qwen3-4B"})
app = LLMMiddleware(app, base_path="/ai", engine=engine)
```
"""

from .engine import RemoteEngine
from .errors import UpstreamFailedError, UpstreamTimeoutError
from .upstream import UpstreamStatus

__all__ = ["RemoteEngine", "UpstreamFailedError", "UpstreamStatus", "UpstreamTimeoutError"]
