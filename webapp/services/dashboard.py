"""Reads of the operator dashboard (overview, retries, dead letters, audit log, cache,
query timings). Every function returns plain data for the templates; none writes.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from flask import current_app

from webapp.adapters import dashboard_queries as q
from webapp.adapters import outbox_relay
from webapp.adapters.dashboard_queries import DeadLetterFilter
from webapp.extensions import get_db
from webapp.services.unit_of_work import utcnow

log = logging.getLogger(__name__)

PAGE_SIZE = 50
#: the list pages through this many matches at most (deeper OFFSETs walk the index)
PAGE_CAP = 10_000
CHART_WIDTH = 600
CHART_HEIGHT = 120


def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        current_app.config["REDIS_URL"], socket_timeout=0.5, socket_connect_timeout=0.5
    )


# -- overview ------------------------------------------------------------------------------
@dataclass
class Chart:
    """A line chart drawn server-side as an SVG polyline."""

    points: str
    max_value: int
    last_value: int
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    start_label: str = ""
    end_label: str = ""


def line_chart(values: list[int], starts: list[datetime]) -> Chart:
    """Scale ``values`` into the chart box (y grows downwards in SVG)."""
    top = max(max(values, default=0), 1)
    n = max(len(values) - 1, 1)
    pad = 4
    coords = []
    for i, value in enumerate(values):
        x = pad + (CHART_WIDTH - 2 * pad) * i / n
        y = CHART_HEIGHT - pad - (CHART_HEIGHT - 2 * pad) * value / top
        coords.append(f"{x:.1f},{y:.1f}")
    return Chart(
        points=" ".join(coords),
        max_value=max(values, default=0),
        last_value=values[-1] if values else 0,
        start_label=starts[0].strftime("%H:%M") if starts else "",
        end_label=starts[-1].strftime("%H:%M") if starts else "",
    )


#: migration 0007: autovacuum cleans the outbox after this many dead row versions plus
#: this share of its live ones; the overview (and the LesOutboxNotVacuumed alert) call
#: it overdue at five times that
VACUUM_THRESHOLD_ROWS = 1000
VACUUM_SCALE_FACTOR = 0.01
VACUUM_OVERDUE_FACTOR = 5


@dataclass
class TableUpkeep:
    """The outbox table as PostgreSQL counts it."""

    live_rows: int
    dead_rows: int
    #: seconds since the last vacuum, None if never
    vacuumed_ago: float | None

    @property
    def overdue(self) -> bool:
        threshold = VACUUM_THRESHOLD_ROWS + VACUUM_SCALE_FACTOR * self.live_rows
        return self.dead_rows > VACUUM_OVERDUE_FACTOR * threshold


def table_upkeep(figures: dict[str, float] | None, now: datetime) -> TableUpkeep | None:
    """From :func:`webapp.adapters.outbox_relay.table_upkeep` (None on SQLite)."""
    if figures is None:
        return None
    last = figures["last_vacuum_timestamp"]
    return TableUpkeep(
        live_rows=int(figures["live_rows"]),
        dead_rows=int(figures["dead_rows"]),
        vacuumed_ago=max(now.timestamp() - last, 0.0) if last else None,
    )


@dataclass
class Overview:
    counts: dict[str, int]
    oldest_pending_age: float | None
    processed_last_hour: int
    processed_per_minute: float
    processed_chart: Chart
    backlog_chart: Chart
    heartbeats: dict[str, float | None] = field(default_factory=dict)
    queues: list[tuple[str, int]] = field(default_factory=list)
    workers_total: int = 0
    workers_busy: int = 0
    redis_error: str | None = None
    now: datetime | None = None
    table: TableUpkeep | None = None


def overview(now: datetime | None = None) -> Overview:
    now = now or utcnow()
    with get_db().engine.connect() as conn:
        counts = q.outbox_counts(conn)
        oldest = q.oldest_pending_created_at(conn)
        series = q.throughput(conn, now, counts=counts)
        upkeep = outbox_relay.table_upkeep(conn)
    processed_total = sum(series.processed)
    result = Overview(
        counts=counts,
        oldest_pending_age=(now - oldest).total_seconds() if oldest else None,
        processed_last_hour=processed_total,
        processed_per_minute=processed_total / max(len(series.processed), 1),
        processed_chart=line_chart(series.processed, series.minute_starts),
        backlog_chart=line_chart(series.backlog, series.minute_starts),
        now=now,
        table=table_upkeep(upkeep, now),
    )
    try:
        _background_state(result, now)
    except redis.RedisError as error:
        log.warning("dashboard: Redis unreachable: %s", error)
        result.redis_error = f"Redis is unreachable ({type(error).__name__})."
    return result


def _background_state(result: Overview, now: datetime) -> None:
    from rq import Queue, Worker

    from webapp.adapters import heartbeats

    client = _redis()
    for kind in ("relay", "worker"):
        beat = heartbeats.last_beat(client, kind)
        result.heartbeats[kind] = None if beat is None else max(now.timestamp() - beat, 0.0)
    result.queues = sorted((queue.name, queue.count) for queue in Queue.all(connection=client))
    workers = Worker.all(connection=client)
    result.workers_total = len(workers)
    result.workers_busy = sum(1 for w in workers if w.get_state() == "busy")


# -- retries -------------------------------------------------------------------------------
def retrying(limit: int = 100) -> list[dict[str, Any]]:
    with get_db().engine.connect() as conn:
        return q.retrying_messages(conn, limit)


# -- dead letters --------------------------------------------------------------------------
@dataclass
class DeadLetterPage:
    filter: DeadLetterFilter
    rows: list[dict[str, Any]]
    #: exact number of matching dead letters
    total: int
    page: int
    pages: int
    #: more matches than the pages reach (:data:`PAGE_CAP`)
    pages_capped: bool
    groups: list[dict[str, Any]]
    types: list[tuple[str, int]]
    error_types: list[tuple[str, int]]


def dead_letters(flt: DeadLetterFilter, page: int = 1) -> DeadLetterPage:
    page = max(page, 1)
    with get_db().engine.connect() as conn:
        total, groups = q.dead_letter_summary(conn, flt)
        pages = max(math.ceil(min(total, PAGE_CAP) / PAGE_SIZE), 1)
        page = min(page, pages)
        rows = q.dead_letter_page(conn, flt, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        facets = q.facets(conn)
    return DeadLetterPage(
        flt,
        rows,
        total,
        page,
        pages,
        total > PAGE_CAP,
        groups,
        facets["Type"],
        facets["ErrorType"],
    )


def dead_letter_summary(flt: DeadLetterFilter) -> tuple[int, list[dict[str, Any]]]:
    """Matching count and the groups: the part of the page that refreshes."""
    with get_db().engine.connect() as conn:
        return q.dead_letter_summary(conn, flt)


def exact_count(flt: DeadLetterFilter) -> int:
    """The exact number of matching dead letters (the confirmation step shows it)."""
    with get_db().engine.connect() as conn:
        return q.dead_letter_count(conn, flt)


def message(message_id: uuid.UUID) -> dict[str, Any] | None:
    with get_db().engine.connect() as conn:
        return q.message_detail(conn, message_id)


# -- audit ---------------------------------------------------------------------------------
def audit_log(page: int = 1) -> tuple[list[dict[str, Any]], int, int]:
    """(entries, page, pages), newest first."""
    with get_db().engine.connect() as conn:
        pages = max(math.ceil(q.audit_count(conn) / PAGE_SIZE), 1)
        page = min(max(page, 1), pages)
        return q.audit_entries(conn, (page - 1) * PAGE_SIZE, PAGE_SIZE), page, pages


# -- cache ---------------------------------------------------------------------------------
REGION_LABELS = {
    "event_details": "Event details",
    "user_information": "Attendee information",
    "waitlist_positions": "Waitlist positions",
    "registration_counts": "Registration counts",
    "page_output": "Page output",
}


def cache_regions() -> list[dict[str, Any]]:
    """Hit rates per cache region: last 5 minutes and since start (the cache layer's
    shared counters, the same increments Prometheus exports)."""
    from webapp.adapters.cache import cache_stats

    rows = []
    for region, entry in cache_stats(current_app).items():
        rows.append({"region": region, "label": REGION_LABELS.get(region, region), **entry})
    return rows


# -- query timings -------------------------------------------------------------------------
WINDOWS = (1, 5, 15, 60)


@dataclass
class QueryTimings:
    window: int
    sort: str
    statements: list[Any]
    slow: list[dict[str, Any]]
    slow_ms: float
    error: str | None = None


def query_timings(window: int = 5, sort: str = "total") -> QueryTimings:
    from webapp.adapters import query_stats

    window = window if window in WINDOWS else 5
    sort = sort if sort in query_stats.SORTS else "total"
    slow_ms = float(current_app.config.get("SLOW_QUERY_MS", 100.0))
    result = QueryTimings(window, sort, [], [], slow_ms)
    query_stats.flush_query_stats()  # this process's latest statements count too
    try:
        client = _redis()
        result.statements = query_stats.query_report(client, window, sort)
        result.slow = query_stats.slow_queries(client)
    except redis.RedisError as error:
        result.error = f"Redis is unreachable ({type(error).__name__}): no timings to show."
    for entry in result.slow:
        entry["at_dt"] = datetime.fromtimestamp(entry["at"], UTC)
    return result
