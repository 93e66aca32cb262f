"""Observers that feed the custom metrics: SQL statements and the connection pool
(SQLAlchemy events), promotions (after commit), and the gauges read from the
database on scrape (outbox backlog, top waitlists, popular events)."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.pool import Pool

from webapp.adapters.tables import events, metadata
from webapp.domain.messages import RegistrationPromoted
from webapp.observability.metrics import (
    DB_POOL_IN_USE,
    DB_POOL_OVERFLOW,
    DB_POOL_WAIT_SECONDS,
    DB_STATEMENT_SECONDS,
    EVENT_POPULARITY,
    HEARTBEAT_TIMESTAMP,
    OUTBOX_MESSAGES,
    OUTBOX_OLDEST_PENDING_SECONDS,
    OUTBOX_TABLE_LAST_VACUUM,
    OUTBOX_TABLE_ROWS,
    PROMOTIONS,
    WAITLIST_LENGTH,
)

log = logging.getLogger("les.db")

#: statement kinds and tables are bounded: anything else is "other"
KINDS = ("select", "insert", "update", "delete")
_TABLES = {name.lower(): name for name in metadata.tables}
_FIRST_TABLE = re.compile(
    r"\b(?:from|into|update|join)\s+(?:\w+\.)?\"?([A-Za-z_][A-Za-z0-9_]*)\"?", re.IGNORECASE
)
_START_KEY = "les_statement_started"
#: distinct statement texts whose labels are remembered (an IN list's length or a
#: literal makes a new text; the least recently used is forgotten)
STATEMENTS_KEPT = 1024

settings: dict[str, float | bool] = {"slow_query_ms": 100.0, "query_logging": False}
_installed = {"db": False}


def statement_labels(statement: str) -> tuple[str, str]:
    """(kind, table) of a SQL statement; both from a fixed set."""
    text = statement.lstrip(" (\n\t").lower()
    first = text.split(None, 1)[0] if text else ""
    if first == "with":  # a CTE: the verb is the first write verb, else select
        first = next((k for k in ("insert", "update", "delete") if f" {k} " in text), "select")
    kind = first if first in KINDS else "other"
    match = _FIRST_TABLE.search(statement)
    table = _TABLES.get(match.group(1).lower(), "other") if match else "none"
    return kind, table


@lru_cache(maxsize=STATEMENTS_KEPT)
def _statement_series(statement: str) -> tuple[str, str, Any]:
    """(kind, table, histogram series) of a statement: a process runs the same few
    statement texts again and again (SQLAlchemy compiles each once), so their labels
    are worked out once, not with a regular expression on every execution."""
    kind, table = statement_labels(statement)
    return kind, table, DB_STATEMENT_SECONDS.labels(kind=kind, table=table)


def _before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    conn.info.setdefault(_START_KEY, []).append(time.perf_counter())


class SlowQueryLog:
    """The "slow query" log lines: at most one per statement kind and table every
    ``interval`` seconds in a process; the next line counts the ones not logged
    since (``suppressed``) and gives the slowest of them (``suppressed_slowest_ms``).

    Registrations of a hot event queue for the event's row lock, so in the
    benchmark's hot event about half of them waited 100 ms or more for it: 40 lines a
    second of the same statement, each about 0.1 ms of the web's CPU to mask and
    format, which told an operator nothing the first did not. Every statement is
    still timed in the ``les_db_statement_duration_seconds`` histogram and in the
    operator dashboard's query timings. An ``interval`` of 0 logs every slow one."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._logged_at: dict[tuple[str, str], float] = {}
        #: (count, slowest ms) of the lines not logged since the last, per kind and table
        self._held: dict[tuple[str, str], tuple[int, float]] = {}

    def note(self, kind: str, table: str, statement: str, elapsed_ms: float) -> None:
        key = (kind, table)
        now = self._clock()
        with self._lock:
            logged_at = self._logged_at.get(key)
            if logged_at is not None and now - logged_at < self.interval:
                count, slowest = self._held.get(key, (0, 0.0))
                self._held[key] = (count + 1, max(slowest, elapsed_ms))
                return
            self._logged_at[key] = now
            held = self._held.pop(key, None)
        extra = _statement_fields(kind, table, statement, elapsed_ms)
        if held is not None:
            extra["suppressed"], extra["suppressed_slowest_ms"] = held[0], round(held[1], 2)
        log.warning("slow query", extra=extra)

    def after_fork_in_child(self) -> None:
        """A forked child (a worker's work horse, a web worker) starts with the lock
        free: a thread of the parent may have held it at the fork, and none will here."""
        self._lock = threading.Lock()


def _statement_fields(kind: str, table: str, statement: str, elapsed_ms: float) -> dict[str, Any]:
    """A statement's fields in its log line."""
    return {
        "duration_ms": round(elapsed_ms, 2),
        "kind": kind,
        "table": table,
        "statement": statement[:500],
    }


_slow_queries = SlowQueryLog(1.0)
os.register_at_fork(after_in_child=lambda: _slow_queries.after_fork_in_child())


def _after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    started = conn.info.get(_START_KEY)
    if not started:
        return
    elapsed = time.perf_counter() - started.pop()
    kind, table, series = _statement_series(statement)
    series.observe(elapsed)
    elapsed_ms = elapsed * 1000
    if elapsed_ms >= float(settings["slow_query_ms"]):
        _slow_queries.note(kind, table, statement, elapsed_ms)
    elif settings["query_logging"]:
        log.debug(
            "query", extra={**_statement_fields(kind, table, statement, elapsed_ms), "sample": True}
        )


def _on_error(context: Any) -> None:
    conn = context.connection
    if conn is not None and conn.info.get(_START_KEY):
        conn.info[_START_KEY].pop()


def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    DB_POOL_IN_USE.inc()
    _record_overflow(record)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    DB_POOL_IN_USE.dec()
    _record_overflow(record)


def _record_overflow(record: Any) -> None:
    pool = getattr(record, "_pool", None)
    overflow = getattr(pool, "overflow", None)
    if callable(overflow):
        DB_POOL_OVERFLOW.set(max(0, overflow()))


def _timed_connect(original: Any) -> Any:
    def connect(self: Pool) -> Any:
        started = time.perf_counter()
        try:
            return original(self)
        finally:
            DB_POOL_WAIT_SECONDS.observe(time.perf_counter() - started)

    connect._les_timed = True  # type: ignore[attr-defined]
    return connect


def install_db_observers(
    slow_query_ms: float = 100.0, query_logging: bool = False, slow_query_log_seconds: float = 1.0
) -> None:
    """Listen on every engine and pool of the process (class-level events), once."""
    settings["slow_query_ms"] = slow_query_ms
    settings["query_logging"] = query_logging
    global _slow_queries
    _slow_queries = SlowQueryLog(slow_query_log_seconds)
    if _installed["db"]:
        return
    event.listen(Engine, "before_cursor_execute", _before_execute)
    event.listen(Engine, "after_cursor_execute", _after_execute)
    event.listen(Engine, "handle_error", _on_error)
    event.listen(Pool, "checkout", _on_checkout)
    event.listen(Pool, "checkin", _on_checkin)
    if not getattr(Pool.connect, "_les_timed", False):
        # the wait for a pooled (or new) connection: no pool event fires before it
        Pool.connect = _timed_connect(Pool.connect)  # type: ignore[method-assign]
    _installed["db"] = True


def count_promotions(result: Any) -> None:
    """After-commit hook: one promotion per committed ``RegistrationPromoted``."""
    promoted = sum(isinstance(m, RegistrationPromoted) for m in result.messages)
    if promoted:
        PROMOTIONS.inc(promoted)


class BusinessGauges:
    """Outbox backlog and top-N event gauges, read with a few cheap queries when
    ``/metrics`` is scraped (at most every ``min_interval`` seconds per process)."""

    def __init__(
        self,
        engine: Engine,
        redis_url: str | None = None,
        top_n: int = 10,
        min_interval: float = 5.0,
    ) -> None:
        self.engine = engine
        self.redis_url = redis_url
        self._redis: Any = None
        self.top_n = top_n
        self.min_interval = min_interval
        self._last = 0.0
        self._lock = threading.Lock()
        self._labels: dict[str, set[str]] = {"waitlist": set(), "popularity": set()}

    def refresh(self, force: bool = False) -> bool:
        """Update the gauges; False when skipped (too soon) or the database failed."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_interval:
                return False
            self._last = now
        try:
            self._refresh()
        except Exception:
            log.warning("could not refresh the business gauges", exc_info=True)
            return False
        return True

    def _refresh(self) -> None:
        from webapp.adapters.outbox_relay import backlog, table_upkeep

        e = events.c
        waitlists = (
            select(e.Id, e.WaitlistCount)
            .where(e.WaitlistCount > 0)
            .order_by(e.WaitlistCount.desc(), e.Id)
            .limit(self.top_n)
        )
        registered = e.ConfirmedCount + e.WaitlistCount
        popular = (
            select(e.Id, registered)
            .where(registered > 0)
            .order_by(registered.desc(), e.Id)
            .limit(self.top_n)
        )
        with self.engine.connect() as conn:
            # the same figures the relay publishes, measured independently of it
            figures = backlog(conn, datetime.now(UTC))
            waitlist_rows = conn.execute(waitlists).all()
            popular_rows = conn.execute(popular).all()
            upkeep = table_upkeep(conn)
        for state in ("pending", "retrying", "dead"):
            OUTBOX_MESSAGES.labels(state=state).set(figures[state])
        OUTBOX_OLDEST_PENDING_SECONDS.set(max(0.0, figures["oldest_pending_age_seconds"]))
        if upkeep is not None:  # PostgreSQL
            table = "OutboxMessages"
            OUTBOX_TABLE_ROWS.labels(table=table, version="live").set(upkeep["live_rows"])
            OUTBOX_TABLE_ROWS.labels(table=table, version="dead").set(upkeep["dead_rows"])
            OUTBOX_TABLE_LAST_VACUUM.labels(table=table).set(upkeep["last_vacuum_timestamp"])
        self._set_top(WAITLIST_LENGTH, "waitlist", waitlist_rows)
        self._set_top(EVENT_POPULARITY, "popularity", popular_rows)
        if self.redis_url:
            self._heartbeats()

    def _heartbeats(self) -> None:
        """The relay's and workers' last beats as Redis saw them: when a process dies
        its own /metrics goes silent, but this series keeps the (aging) timestamp."""
        import redis

        from webapp.adapters import heartbeats

        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        for kind in ("relay", "worker"):
            last = heartbeats.last_beat(self._redis, kind)
            if last is not None:
                HEARTBEAT_TIMESTAMP.labels(process=kind).set(last)

    def _set_top(self, gauge: Any, kind: str, rows: list[Any]) -> None:
        values = {str(event_id): float(value) for event_id, value in rows}
        for stale in self._labels[kind] - values.keys():
            # multiprocess files cannot forget a label: zero it (topk ignores it)
            if _multiprocess():
                gauge.labels(event=stale).set(0)
            else:
                gauge.remove(stale)
        for label, value in values.items():
            gauge.labels(event=label).set(value)
        self._labels[kind] = set(values) | (self._labels[kind] if _multiprocess() else set())


def _multiprocess() -> bool:
    import os

    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
