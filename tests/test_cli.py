"""``llm-middleware serve``: arguments, and a real run stopped by SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llm_middleware.api.docs import SWAGGER_UI_CDN
from llm_middleware.cli import build_parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--demo", "--base-path", "--host", "--port", "--quantize", "--max-batch-size",
                   "--api-key", "--public-path", "--request-timeout", "--drain-timeout"):
        assert option in text


def test_help_groups_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options", "model", "server", "access", "timeouts", "pages"]
    pages = text[text.index("\npages:"):]
    assert all(option in pages for option in ("--playground", "--docs-offline", "--docs-cdn", "--no-docs"))


def test_page_options() -> None:
    parse = build_parser().parse_args
    default = parse(["serve", "--demo"])
    assert (getattr(default, "docs", "offline"), default.docs_cdn, default.playground) == ("offline", None, False)
    assert parse(["serve", "--demo", "--docs-cdn"]).docs_cdn == SWAGGER_UI_CDN
    assert parse(["serve", "--demo", "--docs-cdn", "https://cdn.example/ui"]).docs_cdn == "https://cdn.example/ui"
    assert parse(["serve", "--demo", "--no-docs", "--playground"]).docs == "off"
    with pytest.raises(SystemExit):
        parse(["serve", "--demo", "--docs-offline", "--docs-cdn"])


def test_model_or_demo_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
    args = build_parser().parse_args(["serve", "--demo", "--quantize", "4bit", "--max-batch-size", "4"])
    assert (args.demo, args.quantize, args.max_batch_size, args.base_path) == (True, "4bit", 4, "/ai")


def test_serve_answers_under_the_base_path_and_stops_on_sigterm(tiny_model_dir: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_middleware.cli", "serve", "--model", str(tiny_model_dir),
         "--base-path", "/llm", "--port", str(port), "--max-batch-size", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                if httpx.get(url + "/llm/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert httpx.get(url + "/llm/v1/models").json()["object"] == "list"
        assert httpx.get(url + "/").status_code == 404
        assert httpx.get(url + "/ai/v1/models").status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
