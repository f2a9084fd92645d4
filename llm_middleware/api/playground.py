"""``GET /playground``: one self-contained page to try the API from a browser.

The page (``playground.html`` beside this module: its style and script inline, nothing loaded
from elsewhere) lists the models, sends a chat with the sampling settings shown, streams the
answer in and shows the request it sent and any error the API answered.  It calls the API with
relative URLs under the request's root path, with the API key typed into it, so it passes the
same access rules as any other client.  Its Content-Security-Policy lets it talk to this server
only and run only its own script.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from functools import cache
from importlib import resources

from .core.http import Request, Response

_ROOT_PLACEHOLDER = "__ROOT_PATH__"


@cache
def _template() -> tuple[str, str]:
    """The page with its root-path placeholder, and its Content-Security-Policy (read once per process)."""
    page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL)
    if script is None:
        raise RuntimeError("playground.html has lost its inline script")
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    )
    return page, policy


async def playground(request: Request, request_id: str) -> Response:
    """The playground page, calling the API under this request's root path."""
    page, policy = _template()
    body = page.replace(_ROOT_PLACEHOLDER, html.escape(request.root_path, quote=True), 1).encode()
    headers = [("content-type", "text/html; charset=utf-8"), ("content-security-policy", policy),
               ("cache-control", "no-cache")]
    return Response(status=200, headers=headers, body=body)
