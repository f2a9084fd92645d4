"""The SIGTERM test's server: ``python -m draining_app PORT`` serves the API the way ``llm-middleware serve``
does (:func:`llm_middleware.cli.serve_app`), with engine steps slowed to at least 50 ms each so
that how far a stream gets does not depend on the machine's speed.

The model comes from ``$LLM_MODEL``, the drain timeout from ``$DRAIN_TIMEOUT``.  On exit it
writes the engine's state to stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from llm_middleware.cli import not_found_app, serve_app
from llm_middleware.middleware import LLMMiddleware


def main() -> None:
    app = LLMMiddleware(not_found_app, model=os.environ["LLM_MODEL"], drain_timeout=float(os.environ["DRAIN_TIMEOUT"]))
    app.engine.wait_ready_sync(120)
    worker = app.engine._models[app.engine.resolve_model(None)].worker  # noqa: SLF001
    worker.before_step = lambda batch: time.sleep(0.05)
    asyncio.run(serve_app(app, "127.0.0.1", int(sys.argv[1])))
    print(f"engine state after shutdown: {app.engine.state}", file=sys.stderr)


if __name__ == "__main__":
    main()
