"""Browser tests: Playwright driving Debian's Chromium against a live server.

``playwright install`` cannot download browsers here, so the plugin's launch
arguments are extended to use the system Chromium. The app is served from a
thread (pytest-flask's live_server does not work with current Werkzeug).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.conftest import make_app, service_missing
from webapp.extensions import get_db

CHROMIUM = os.environ.get("PLAYWRIGHT_CHROMIUM_EXECUTABLE", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not os.path.exists(CHROMIUM):
        service_missing("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install -y chromium)"))
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [*browser_type_launch_args.get("args", []), *CHROMIUM_ARGS],
    }


@pytest.fixture(scope="session")
def base_url() -> None:
    """Replaces pytest-base-url's fixture (a deprecated instance-method fixture that
    pytest 9 warns about, and warnings are errors here). Tests use ``live_server``."""
    return None


@pytest.fixture
def live_app(postgres_url: str, redis_url: str) -> Iterator[Flask]:
    """A PostgreSQL-backed app whose status pages poll quickly."""
    app = make_app(postgres_url, redis_url, STATUS_POLL_SECONDS=0.5)
    yield app
    get_db(app).dispose()


@pytest.fixture
def live_server(live_app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
