"""HTTP metrics under gunicorn with several workers (multiprocess mode): the scraped
totals are the sum over all workers, and /metrics needs the bearer token."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.observability_processes import (
    Gunicorn,
    app_env,
    samples,
    total,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def gunicorn(postgres_url: str, redis_url: str, tmp_path: Path):
    server = Gunicorn(app_env(postgres_url, redis_url), workers=3, tmp=tmp_path)
    yield server
    server.stop()


def _get(url: str) -> int:
    # a new connection per request: the kernel spreads them over the workers
    with httpx.Client(timeout=30) as client:
        return client.get(url, headers={"Connection": "close"}).status_code


def test_scraped_request_totals_add_up_across_workers(gunicorn):
    before = gunicorn.scrape()  # the readiness probes counted already
    urls = [gunicorn.url + "/"] * 60 + [gunicorn.url + "/healthz"] * 30
    urls += [gunicorn.url + "/events/999999"] * 10
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(_get, urls))
    assert statuses.count(200) == 90 and statuses.count(404) == 10

    # the requests really were served by several processes
    pids = {p.stem.rsplit("_", 1)[1] for p in gunicorn.metrics_dir.glob("counter_*.db")}
    assert "999999" not in pids, "the metrics directory was not emptied on start"
    assert len(pids) >= 2, f"only one worker served requests: {pids}"

    text = gunicorn.scrape()

    def added(name: str, **labels: str) -> float:
        return total(text, name, **labels) - total(before, name, **labels)

    assert added("flask_http_request_total") == 100
    assert added("flask_http_request_total", method="GET", status="200") == 90
    duration = "flask_http_request_duration_seconds_count"
    assert added(duration, url_rule="/") == 60
    assert added(duration, url_rule="/healthz") == 30
    assert added(duration, url_rule="/events/<int:event_id>", status="404") == 10
    # the custom metrics of all workers are in the same scrape
    assert total(text, "les_db_statement_duration_seconds_count", kind="select") > 0
    assert samples(text, "les_outbox_messages", state="pending")


def test_metrics_endpoint_needs_the_token(gunicorn):
    assert httpx.get(gunicorn.url + "/metrics", timeout=5).status_code == 401
    wrong = httpx.get(
        gunicorn.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert wrong.status_code == 401
    assert "flask_http_request_total" in gunicorn.scrape()


def test_a_killed_worker_is_marked_dead_and_its_counts_stay(gunicorn):
    before = total(gunicorn.scrape(), "flask_http_request_duration_seconds_count")
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(_get, [gunicorn.url + "/healthz"] * 30))
    live = {p.stem.rsplit("_", 1)[1] for p in gunicorn.metrics_dir.glob("gauge_livesum_*.db")}
    live.discard(str(gunicorn.proc.pid))  # the master (the app is preloaded there)
    assert live, "workers write live gauges"
    victim = sorted(live)[0]
    os.kill(int(victim), signal.SIGKILL)

    def victim_files_gone() -> bool:
        return not list(gunicorn.metrics_dir.glob(f"gauge_livesum_{victim}.db"))

    wait_until(victim_files_gone, 20, "child_exit to mark the worker dead", gunicorn.proc)
    time.sleep(0.5)
    text = gunicorn.scrape()
    assert total(text, "flask_http_request_duration_seconds_count") == before + 30
