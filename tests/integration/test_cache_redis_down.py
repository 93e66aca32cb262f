"""The cache's Redis down or slow: pages render from the database, errors are
counted and logged once per interval, nothing 500s, and no stale value survives.

Uses a throwaway ``redis-server`` (never the shared one): killed, or paused with
``CLIENT PAUSE`` to play a Redis slower than CACHE_SOCKET_TIMEOUT.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from flask import Flask

from tests.conftest import make_app
from webapp.extensions import get_db
from webapp.observability.metrics import CACHE_REQUESTS
from webapp.services import events as event_service
from webapp.services import read_model, registrations
from webapp.services.status_links import make_token

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed for the cache outage tests")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield proc, url
    client.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


@pytest.fixture
def outage_app(
    sqlite_url: str, redis_url: str, throwaway_redis: tuple[subprocess.Popen[bytes], str]
) -> Iterator[Flask]:
    app = make_app(
        sqlite_url,
        redis_url,
        CACHE_REDIS_URL=throwaway_redis[1],
        CACHE_SOCKET_TIMEOUT=0.2,
        CACHE_RETRY_AFTER_SECONDS=0.5,
    )
    yield app
    get_db(app).dispose()


def errors_counted() -> float:
    return sum(
        float(CACHE_REQUESTS.labels(region, "error")._value.get())
        for region in ("event_details", "registration_counts", "user_information", "page_output")
    )


def seats(html: str) -> str:
    match = re.search(r'class="seats-left">([^<]+)<', html)
    assert match, html
    return match.group(1)


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cache unavailable" in r.getMessage()]


def test_pages_render_from_the_database_when_the_cache_redis_dies(
    outage_app: Flask,
    throwaway_redis: tuple[subprocess.Popen[bytes], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = outage_app
    uow = get_db(app).unit_of_work
    start = datetime.now(UTC) + timedelta(days=2)
    event_id = event_service.create_event(uow, event_service.EventDetails("Gig", "", "", start), 3)
    client = app.test_client()
    client.get("/")
    assert client.get("/").headers["X-Cache"] == "HIT"
    client.get(f"/events/{event_id}")

    throwaway_redis[0].kill()
    throwaway_redis[0].wait(5)
    errors_before = errors_counted()
    caplog.set_level(logging.WARNING, logger="webapp.adapters.cache")

    outcome = registrations.register(uow, event_id, "Ann", "ann@example.com")
    status_path = f"/registrations/{make_token(app.secret_key, outcome.registration_id)}"
    began = time.monotonic()
    for _ in range(15):
        listing = client.get("/")
        detail = client.get(f"/events/{event_id}")
        status = client.get(status_path)
        assert (listing.status_code, detail.status_code, status.status_code) == (200, 200, 200)
        assert seats(listing.get_data(as_text=True)) == "2 of 3"
        assert "2 of 3" in detail.get_data(as_text=True)
        assert "Ann" in status.get_data(as_text=True)
    elapsed = time.monotonic() - began

    assert elapsed < 10, "a dead cache must not make every request wait for timeouts"
    assert errors_counted() - errors_before >= 45
    assert len(outage_warnings(caplog)) == 1  # once per interval, not per request
    with app.app_context():
        stats = read_model.cache_stats()
    assert stats["event_details"]["scope"] == "this_process"
    assert stats["event_details"]["errors"] >= 15


def test_a_slow_cache_redis_times_out_and_leaves_no_stale_value_behind(
    outage_app: Flask,
    throwaway_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    """While Redis stalls (CLIENT PAUSE), a write's invalidation cannot reach it; the
    cached counts from before must not come back once Redis answers again."""
    app = outage_app
    uow = get_db(app).unit_of_work
    start = datetime.now(UTC) + timedelta(days=2)
    event_id = event_service.create_event(uow, event_service.EventDetails("Gig", "", "", start), 3)
    client = app.test_client()
    assert "3 of 3" in client.get(f"/events/{event_id}").get_data(as_text=True)
    assert "3 of 3" in client.get(f"/events/{event_id}").get_data(as_text=True)  # cached

    admin = redis.Redis.from_url(throwaway_redis[1])
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    began = time.monotonic()
    registrations.register(uow, event_id, "Ann", f"ann-{uuid.uuid4().hex[:6]}@example.com")
    during = client.get(f"/events/{event_id}")
    assert during.status_code == 200
    assert "2 of 3" in during.get_data(as_text=True)
    assert time.monotonic() - began < 1.4, "the socket timeout must cut a stalled Redis short"

    time.sleep(max(0.0, 1.7 - (time.monotonic() - began)))  # pause over, retry window passed
    for _ in range(3):
        after = client.get(f"/events/{event_id}")
        assert after.status_code == 200
        assert "2 of 3" in after.get_data(as_text=True)
    admin.close()
