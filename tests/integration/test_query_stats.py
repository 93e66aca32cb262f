"""SQL timings: normalized, collected in every process, aggregated through Redis."""

# ruff: noqa: F811  (the login_as fixture is imported, then requested by name)

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.conftest import make_app
from tests.integration.staff_fixtures import LoginAs, login_as  # noqa: F401
from webapp.adapters import query_stats
from webapp.adapters.query_stats import normalize_sql, query_report, slow_queries
from webapp.extensions import get_db


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (
            "SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'O''Brien'",
            "SELECT * FROM t WHERE id IN (?...) AND name = ?",
        ),
        (
            'SELECT "Id" FROM "Events" WHERE "Id" = %(Id_1)s LIMIT %(param_1)s',
            'SELECT "Id" FROM "Events" WHERE "Id" = ? LIMIT ?',
        ),
        (
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?)",
            "SELECT a FROM t WHERE b = ? AND c IN (?...)",
        ),
        (
            "SELECT a FROM t WHERE b = :b_1 AND c::text = $1",
            "SELECT a FROM t WHERE b = ? AND c::text = ?",
        ),
        (
            "INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (%s, %s)",
            "INSERT INTO t (a, b) VALUES (?, ?), ...",
        ),
        ("SELECT t1.x  FROM\n t1 -- note\n WHERE x > 10.5", "SELECT t1.x FROM t1 WHERE x > ?"),
    ],
)
def test_statements_are_normalized(raw: str, normalized: str) -> None:
    assert normalize_sql(raw) == normalized


def test_in_lists_of_any_length_are_one_statement() -> None:
    assert normalize_sql("SELECT 1 FROM t WHERE id IN (1)") == normalize_sql(
        "SELECT 1 FROM t WHERE id IN (4, 5, 6, 7)"
    )


@pytest.mark.redis
@pytest.mark.postgres
def test_timings_of_two_processes_are_added_up_in_redis(postgres_url: str, redis_url: str) -> None:
    """The web app (this process) and a "worker" (another process with its own engine)
    run the same statement: the report counts both, and the slow one shows up."""
    app = make_app(postgres_url, redis_url, SLOW_QUERY_MS=40.0)
    engine = get_db(app).engine
    with engine.connect() as conn:
        for event_id in (1, 2, 3):
            conn.execute(text(f'SELECT count(*) FROM "Events" WHERE "Id" IN ({event_id}, 99)'))
        conn.execute(text("SELECT pg_sleep(0.05)"))
    worker = textwrap.dedent(
        f"""
        from sqlalchemy import create_engine, text
        from webapp.adapters.db import normalize_url
        from webapp.adapters.query_stats import init_query_stats, flush_query_stats
        engine = create_engine(normalize_url({postgres_url!r}))
        init_query_stats(engine, {redis_url!r}, process="worker", slow_ms=40.0)
        with engine.connect() as conn:
            for i in range(5):
                conn.execute(text('SELECT count(*) FROM "Events" WHERE "Id" IN (7, 8, 9)'))
        flush_query_stats()
        """
    )
    subprocess.run([sys.executable, "-c", worker], check=True, timeout=60)
    query_stats.flush_query_stats()

    client = redis.Redis.from_url(redis_url)
    report = {s.sql: s for s in query_report(client, window_minutes=5)}
    counted = report['SELECT count(*) FROM "Events" WHERE "Id" IN (?...)']
    assert counted.count == 8
    assert 0 < counted.mean_ms <= counted.p95_ms + 1e-9 or counted.count == 1
    assert counted.total_ms == pytest.approx(counted.mean_ms * 8)
    sleepy = report["SELECT pg_sleep(?)"]
    assert sleepy.mean_ms >= 50
    assert sleepy.p95_ms >= 50
    slow = slow_queries(client)
    assert [q["sql"] for q in slow] == ["SELECT pg_sleep(?)"]
    assert slow[0]["process"] == query_stats.process_role() and slow[0]["ms"] >= 50
    engine.dispose()


@pytest.mark.redis
def test_a_flush_waits_for_the_one_another_thread_is_sending(redis_url: str) -> None:
    """The idle flusher thread took the buffer and is still sending when an RQ work
    horse flushes before ``os._exit``: that flush returns only once the statements are
    in Redis. A request's flush never waits (it leaves the buffer to the next one)."""
    import threading
    import time

    stats = query_stats.QueryStats(redis_url, process="worker")
    client = stats._redis()
    sending = threading.Event()

    class SlowPipeline:
        def __init__(self) -> None:
            self.pipe = client.pipeline(transaction=False)

        def __getattr__(self, name: str) -> object:
            return getattr(self.pipe, name)

        def execute(self) -> object:
            sending.set()
            time.sleep(0.4)  # a Redis round trip under load
            return self.pipe.execute()

    stats._client = type("Slow", (), {"pipeline": lambda self, **_: SlowPipeline()})()
    stats.record("SELECT 41", 1.0)
    flusher = threading.Thread(target=stats.flush)
    flusher.start()
    assert sending.wait(5)
    stats.record("SELECT 42", 2.0)
    started = time.monotonic()
    stats.flush(wait=False)  # a request's: returns at once, keeps its buffer
    assert time.monotonic() - started < 0.1
    stats.flush()  # the work horse's: waits for the flusher, then sends its own
    report = {s.sql: s.count for s in query_report(client, window_minutes=5)}
    assert report.get("SELECT ?") == 2
    flusher.join(5)


@pytest.mark.redis
def test_query_timings_page_lists_statements_slowest_first(
    app: Flask, client: FlaskClient, login_as: LoginAs
) -> None:
    login_as("viewer")
    with get_db(app).engine.connect() as conn:
        for _ in range(3):
            conn.execute(text('SELECT "Id" FROM "Events" WHERE "Id" = 12345'))

    page = client.get("/admin/operator/queries", query_string={"sort": "count"})
    assert page.status_code == 200
    assert "SELECT &#34;Id&#34; FROM &#34;Events&#34; WHERE &#34;Id&#34; = ?" in page.text
    counts = [
        int(chunk.split("<", 1)[0])
        for chunk in page.text.split('<td class="op-num query-count">')[1:]
    ]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] >= 3

    fragment = client.get("/admin/operator/queries", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="queries"')


@pytest.mark.redis
def test_cache_page_shows_hit_rates_per_region(
    app: Flask, client: FlaskClient, login_as: LoginAs, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=5)
    visitor = app.test_client()
    for _ in range(4):  # the first read of the event details misses, the others hit
        # (a query string bypasses the page's output cache, so the details are read)
        assert visitor.get(f"/events/{event_id}?ref=mail").status_code == 200
    login_as("viewer")

    page = client.get("/admin/operator/cache")

    assert page.status_code == 200
    for label in (
        "Event details",
        "Attendee information",
        "Waitlist positions",
        "Registration counts",
        "Page output",
    ):
        assert label in page.text
    row = page.text.split('<tr id="cache-event_details">', 1)[1].split("</tr>", 1)[0]
    cells = [c.split("<", 1)[0] for c in row.split('<td class="op-num')[1:]]
    last_5_rate, last_5_lookups, rate, hits, misses = (c.split(">", 1)[1] for c in cells[:5])
    assert int(hits) >= 3 and int(misses) >= 1
    assert int(last_5_lookups) >= 4
    assert rate.endswith("%") and 0 < float(rate.rstrip(" %")) < 100
    assert last_5_rate.endswith("%")


@pytest.mark.redis
@pytest.mark.postgres
def test_slow_statements_of_a_burst_are_one_log_line_and_every_one_is_timed(
    postgres_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three slow statements in a row (as every registration of a hot event waits for
    its row lock): one "slow query" line, while the statement histogram and the
    dashboard's slow statements have all three."""
    from prometheus_client import REGISTRY

    app = make_app(postgres_url, redis_url, SLOW_QUERY_MS=20.0, SLOW_QUERY_LOG_SECONDS=60.0)
    labels = {"kind": "select", "table": "none"}
    before = REGISTRY.get_sample_value("les_db_statement_duration_seconds_count", labels) or 0.0
    caplog.set_level(logging.WARNING, logger="les.db")
    engine = get_db(app).engine
    with engine.connect() as conn:
        for _ in range(3):
            conn.execute(text("SELECT pg_sleep(0.03)"))
    engine.dispose()
    query_stats.flush_query_stats()

    lines = [r for r in caplog.records if r.name == "les.db" and r.getMessage() == "slow query"]
    assert len(lines) == 1
    assert lines[0].statement == "SELECT pg_sleep(0.03)" and lines[0].duration_ms >= 30
    after = REGISTRY.get_sample_value("les_db_statement_duration_seconds_count", labels) or 0.0
    assert after - before == 3
    slow = slow_queries(redis.Redis.from_url(redis_url))
    assert [q["sql"] for q in slow].count("SELECT pg_sleep(?)") >= 3
