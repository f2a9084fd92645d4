"""``llm-middleware serve``: the LLM API alone, served by hypercorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from .api.docs import SWAGGER_UI_CDN

if TYPE_CHECKING:
    from .middleware import LLMMiddleware


#: Environment variable with API keys, comma-separated (read when no --api-key is given).
API_KEYS_ENV = "LLM_MIDDLEWARE_API_KEYS"


def api_keys(args: argparse.Namespace) -> list[str] | None:
    """The API keys from ``--api-key`` options, else from ``$LLM_MIDDLEWARE_API_KEYS``; None for an open API."""
    keys = args.api_keys or [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    return keys or None


async def not_found_app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The app behind the API when it is served alone: 404 for every path outside the base path."""
    if scope["type"] == "http":
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 404, "headers": headers, "trailers": False})
        await send({"type": "http.response.body", "body": b"Not Found", "more_body": False})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1000, "reason": None})


def build_parser() -> argparse.ArgumentParser:
    """The ``llm-middleware`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="llm-middleware",
        description="Serve an OpenAI-compatible LLM API (the same one LLMMiddleware mounts in an app).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the API with hypercorn",
        description="Serve the API under --base-path with hypercorn; every other path answers 404. "
        "Stop with Ctrl-C or SIGTERM (graceful: in-flight requests get --drain-timeout seconds to finish).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = serve.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id (e.g. Qwen/Qwen3-4B) or local model directory")
    source.add_argument(
        "--demo",
        action="store_true",
        help="serve a small random-weight demo model (built once, cached; gibberish output)",
    )
    model.add_argument(
        "--quantize", choices=["4bit", "8bit", "nf4"], help="quantize the weights on load (nf4: with bitsandbytes)"
    )
    model.add_argument(
        "--max-batch-size", type=int, help="most requests decoded together in one step (engine default: 32)"
    )

    server = serve.add_argument_group("server")
    server.add_argument("--base-path", default="/ai", help="path prefix of the API (/ai serves /ai/v1/chat/completions)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    server.add_argument("--port", type=int, default=8000, help="TCP port to listen on")

    access = serve.add_argument_group("access")
    access.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"require this key as 'Authorization: Bearer KEY' or 'x-api-key' (repeat for several; "
        f"default: ${API_KEYS_ENV}, comma-separated; neither: no authentication)",
    )
    access.add_argument(
        "--public-path",
        action="append",
        dest="public_paths",
        metavar="PATH",
        help="path under the base path that needs no key (repeatable; default: /health)",
    )
    access.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="browser origin allowed by CORS (repeat for several, '*' for any); none by default",
    )

    limits = serve.add_argument_group("timeouts")
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="end requests running longer than this (504, or an error event mid-stream); 0 for no limit",
    )
    limits.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/Ctrl-C, time that requests in flight get to finish while new ones get 503",
    )

    pages = serve.add_argument_group(
        "pages",
        "browser pages under the base path, behind the same keys as the API: with --api-key, open them to "
        "browsers with --public-path (the playground asks for the key itself)",
    )
    docs = pages.add_mutually_exclusive_group()
    docs.add_argument(
        "--docs-offline",
        action="store_const",
        dest="docs",
        const="offline",
        default=argparse.SUPPRESS,
        help="serve Swagger UI at /docs from the installed swagger-ui-py package (the default: works offline)",
    )
    docs.add_argument(
        "--docs-cdn",
        nargs="?",
        const=SWAGGER_UI_CDN,
        metavar="URL",
        help="serve /docs with Swagger UI loaded by the browser from URL (given without URL: %(const)s)",
    )
    docs.add_argument(
        "--no-docs", action="store_const", dest="docs", const="off", default=argparse.SUPPRESS,
        help="serve no /docs or /openapi.json",
    )
    pages.add_argument(
        "--playground", action="store_true", help="serve /playground, a page to chat with the model from a browser"
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    """Build the middleware for ``args`` and serve it until SIGINT or SIGTERM."""
    from .middleware import LLMMiddleware

    if args.demo:
        from .demo_model import demo_model_path

        model = str(demo_model_path())
    else:
        model = args.model
    engine_options = {"quantize": args.quantize, "max_batch_size": args.max_batch_size}
    app = LLMMiddleware(
        not_found_app,
        base_path=args.base_path,
        model=model,
        allowed_origins=args.allowed_origins,
        include_docs=getattr(args, "docs", "offline") != "off",  # set only by --docs-offline or --no-docs
        docs_cdn=args.docs_cdn,
        include_playground=args.playground,
        api_keys=api_keys(args),
        public_paths=args.public_paths if args.public_paths is not None else ("/health",),
        request_timeout=args.request_timeout or None,
        drain_timeout=args.drain_timeout,
        **{name: value for name, value in engine_options.items() if value is not None},
    )
    await serve_app(app, args.host, args.port)


async def serve_app(app: LLMMiddleware, host: str, port: int) -> None:
    """Serve ``app`` with hypercorn on ``host:port`` until SIGINT or SIGTERM, draining it first."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = "-"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def drained() -> None:
        # Drain while hypercorn still listens: new requests get a 503 instead of a refused connection.
        await stop.wait()
        await app.drain()

    await hypercorn_serve(app, config, shutdown_trigger=drained, mode="asgi")  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llm-middleware`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
