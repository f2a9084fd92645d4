"""The server a benchmark drives: the API over a bare app, or a host route with or without the middleware.

    python -m bench.server --port 8123 --model PATH --options '{"max_batch_size": 64}'
    python -m bench.server --port 8123 --host-app plain|wrapped --model PATH
    python -m bench.server --port 8123 --model PATH --log-level debug   # each prompt step logged

Hypercorn's access log is off so that the figures measure the server, not its logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from llm_middleware.cli import not_found_app
from llm_middleware.middleware import LLMMiddleware


async def host_route(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A host app's own JSON route, the pass-through benchmark's target."""
    if scope["type"] != "http":
        return
    body = b'{"ok": true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--options", default="{}", help="engine options as JSON")
    parser.add_argument("--host-app", choices=["plain", "wrapped"], help="serve the host route instead of the API")
    parser.add_argument("--log-level", help="log llm_middleware at this level (debug: how bursts are chunked) to stderr")
    args = parser.parse_args()
    if args.log_level:
        logging.basicConfig(format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("llm_middleware").setLevel(args.log_level.upper())
    options = json.loads(args.options)
    if args.host_app == "plain":
        app = host_route
    elif args.host_app == "wrapped":
        app = LLMMiddleware(host_route, model=args.model, **options)
    else:
        app = LLMMiddleware(not_found_app, model=args.model, **options)
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main())
