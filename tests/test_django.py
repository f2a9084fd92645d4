"""The example Django project (``examples/django``) under the servers its users start: ``manage.py
runserver``, gunicorn with sync and with threaded workers (WSGI), and hypercorn (ASGI).

Each server runs once for the module, all started together on the one tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from disconnects import leave_a_long_stream
from servers import ROOT, Server, server_env, serving

PROJECT = ROOT / "examples" / "django"
SERVERS = {
    "runserver": Server([str(PROJECT / "manage.py"), "runserver", "--noreload"]),
    "gunicorn-sync": Server(["-m", "gunicorn", "shop.wsgi", "--workers", "1"]),
    "gunicorn-threads": Server(["-m", "gunicorn", "shop.wsgi", "--workers", "1", "--threads", "4"]),
    "hypercorn": Server(["-m", "hypercorn", "shop.asgi:application"]),
}
#: One worker, one request at a time: nothing else is answered while a stream is being written.
SERIAL = {"gunicorn-sync"}
CHAT = [{"role": "user", "content": "Hello"}]


def project_env(model_dir: Path) -> dict[str, str]:
    """The servers' environment: the project's folder importable and its settings with ``/stats``."""
    env = server_env(model_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env["PYTHONPATH"]])
    return {**env, "DJANGO_SETTINGS_MODULE": "django_settings"}


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    with serving(SERVERS, project_env(tiny_model_dir)) as urls:
        yield urls


@pytest.fixture(scope="module")
def home_page(tiny_model_dir: Path) -> dict[str, str]:
    """The home page as Django's own test client gets it from the project, without the middleware."""
    script = (
        "import json, sys; from django.test import Client; from django.test.utils import setup_test_environment; "
        "setup_test_environment(); page = Client().get('/'); "
        "sys.stdout.write(json.dumps({'type': page['content-type'], 'body': page.content.decode()}))"
    )
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=PROJECT,
                          env=project_env(tiny_model_dir), capture_output=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])  # after any line of Django's own


@pytest.mark.parametrize("name", list(SERVERS))
def test_pages_pass_through_and_the_api_answers(servers: dict[str, str], home_page: dict[str, str], name: str) -> None:
    url = servers[name]
    home = httpx.get(url + "/")
    assert (home.status_code, home.headers["content-type"], home.text) == (200, home_page["type"], home_page["body"])
    summary = httpx.post(url + "/summarize", json={"text": "A long text."}, timeout=30)
    assert summary.status_code == 200 and isinstance(summary.json()["summary"], str)
    assert httpx.get(url + "/ai/v1/models").json()["object"] == "list"


@pytest.mark.parametrize("name", list(SERVERS))
def test_streamed_view_writes_what_the_sdk_streams(servers: dict[str, str], name: str) -> None:
    # The project's streamed view and the API decode the same prompt greedily: the same text.
    url = servers[name]
    with httpx.stream("GET", url + "/story", params={"about": "a lighthouse"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain")
        story = response.read().decode()
    client = OpenAI(base_url=url + "/ai/v1", api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Tell a short story about a lighthouse."}],
        stream=True, max_tokens=64, temperature=0,
    )
    streamed = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len(streamed) > 2 and "".join(streamed) == story


@pytest.mark.parametrize("name", list(SERVERS))
def test_disconnect_cancels_the_stream(servers: dict[str, str], name: str) -> None:
    leave_a_long_stream(servers[name], CHAT, running_while_read=name not in SERIAL)
