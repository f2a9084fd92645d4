"""``/docs`` and ``/playground`` in headless Chromium (Debian's ``chromium``, driven by Playwright), served
by ``llm-middleware serve`` with the network blocked: only loopback requests leave the browser.

Screenshots of both pages land in the test's temporary folder (``--basetemp`` chooses where).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright
from servers import Server, server_env, serving

API_KEY = "browser-test-key"
CLI = Server([
    "-m", "llm_middleware.cli", "serve", "--model", "{model}", "--playground", "--docs-offline", "--api-key", API_KEY,
    *(arg for path in ("/health", "/docs", "/openapi.json", "/playground") for arg in ("--public-path", path)),
])


def chromium_path() -> str:
    """The system's Chromium; missing, the tests fail in CI (which installs it) and are skipped elsewhere."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package before the tests")
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    args = [str(tiny_model_dir) if arg == "{model}" else arg for arg in CLI.args]
    with serving({"cli": Server(args)}, server_env(tiny_model_dir)) as urls:
        yield urls["cli"]


@pytest.fixture(scope="module")
def browser_context() -> Iterator[tuple[object, list[str]]]:
    """A Chromium context whose requests to anywhere but loopback are aborted (and listed)."""
    executable = chromium_path()


    blocked: list[str] = []

    def only_loopback(route, request) -> None:  # noqa: ANN001
        if urlsplit(request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", only_loopback)
        yield context, blocked
        browser.close()


def open_page(browser_context, url: str):  # noqa: ANN001, ANN201
    """A new page at ``url``, whose uncaught script errors and policy violations are collected."""
    context, _ = browser_context
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("console", lambda message: "Content-Security-Policy" in message.text and page.problems.append(message.text))
    page.goto(url)
    return page


def test_docs_render_the_operations_offline(server: str, browser_context, tmp_path: Path) -> None:  # noqa: ANN001
    page = open_page(browser_context, server + "/ai/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= {path.strip() for path in paths}
    assert page.locator(".information-container .title").inner_text().startswith("llm_middleware")
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    assert page.problems == [] and browser_context[1] == []


def test_playground_streams_an_answer_and_shows_a_refusal(server: str, browser_context, tmp_path: Path) -> None:  # noqa: ANN001
    page = open_page(browser_context, server + "/ai/playground")
    # No key yet: the model list is refused, and the page says so.
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "401" in page.locator("#error").inner_text()
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.locator("#model option").first.wait_for(state="attached")  # (no wait_for_function: the page's CSP forbids eval)
    assert page.locator("#error").is_hidden()
    page.fill("#max_tokens", "24")
    page.fill("#message", "Tell me about lighthouses.")
    page.click("#send")
    expect(page.locator("#status")).to_have_text(re.compile("^Done"), timeout=30_000)
    answer = page.locator(".message.assistant")
    assert answer.locator(".content").inner_text().strip() != ""
    assert int(answer.get_attribute("data-events")) > 2  # the answer came in pieces, as streamed
    request = page.locator("#raw-request").inner_text()
    assert '"stream": true' in request and '"max_tokens": 24' in request and API_KEY not in request
    page.screenshot(path=tmp_path / "playground.png", full_page=True)
    # A wrong key: the chat itself is refused, shown as an error, and no answer is left behind.
    page.fill("#api-key", "wrong")
    page.fill("#message", "Again?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.locator("#error").inner_text() and page.locator(".message.assistant").count() == 1
    page.screenshot(path=tmp_path / "playground-refused.png", full_page=True)
    assert page.problems == [] and browser_context[1] == []
