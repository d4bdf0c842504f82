"""Browser tests: the real web server (daphne) and engine as subprocesses, driven through Debian's
Chromium with Playwright. They run in their own pytest process (sync Playwright owns the loop)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import Proc, subprocess_env

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # sync Playwright runs an event loop

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def web_server(tmp_path, redis_client) -> Iterator[str]:
    port = free_port()
    proc = Proc("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"],
                subprocess_env(), tmp_path)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    proc.wait_until(answers, 30, "it to listen")
    yield f"http://127.0.0.1:{port}"
    proc.kill()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()

