"""``/docs`` and ``/playground`` in headless Chromium (Debian's ``chromium``, driven by Playwright), served
by ``llm-middleware serve`` with the network blocked: only loopback requests leave the browser.

Screenshots of both pages land in the test's temporary folder (``--basetemp`` chooses where).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request, Route, expect, sync_playwright
from servers import Server, server_env, serving

API_KEY = "browser-test-key"
# The pages are opened to browsers; what the playground calls still needs the key.
PUBLIC = [arg for path in ("/health", "/docs", "/openapi.json", "/playground") for arg in ("--public-path", path)]


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
    args = ["-m", "llm_middleware.cli", "serve", "--model", str(tiny_model_dir), "--playground", "--docs-offline",
            "--api-key", API_KEY, *PUBLIC]
    with serving({"cli": Server(args)}, server_env(tiny_model_dir)) as urls:
        yield urls["cli"]


@dataclass
class Browser:
    """The browser context, and the URLs of the requests it aborted."""

    context: BrowserContext
    blocked: list[str]

    def open(self, url: str) -> tuple[Page, list[str]]:
        """A new page at ``url``, and the list its uncaught script errors and policy violations go to."""
        page = self.context.new_page()
        problems: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if "Content-Security-Policy" in message.text:
                problems.append(message.text)

        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", on_console)
        page.goto(url)
        return page, problems


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, whose requests to anywhere but loopback are aborted (and listed in ``blocked``)."""
    executable = chromium_path()
    blocked: list[str] = []

    def only_loopback(route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", only_loopback)
        yield Browser(context, blocked)
        chromium.close()


def test_docs_render_the_operations_offline(browser: Browser, server: str, tmp_path: Path) -> None:
    page, problems = browser.open(server + "/ai/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= {path.strip() for path in paths}
    assert page.locator(".information-container .title").inner_text().startswith("llm_middleware")
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    assert problems == [] and browser.blocked == []


def test_playground_streams_an_answer_and_shows_a_refusal(browser: Browser, server: str, tmp_path: Path) -> None:
    page, problems = browser.open(server + "/ai/playground")
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
    assert problems == [] and browser.blocked == []
