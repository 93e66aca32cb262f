"""SQL timings of every process (web, relay, worker), aggregated through Redis.

``init_query_stats(engine, redis_url, process="web")`` hooks the engine's
``before/after_cursor_execute`` events. Each statement is normalized (literals and
bound parameters become ``?``, IN-lists and multi-row VALUES collapse), timed and
added to an in-process buffer; the buffer goes to Redis at most about once per
``flush_interval`` (from the hot path when it is due, and from a small daemon thread
when the process is idle). The hot path is a ``perf_counter`` pair, a cached
normalization and a dict update under a lock.

Redis layout (all keys expire, so nothing grows forever)::

    les:qs:sql                 hash  statement id -> normalized SQL
    les:qs:m:<minute>          hash  "<id>:n" count, "<id>:t" total ms
    les:qs:l:<minute>:<id>     list  sampled latencies (ms) of that minute
    les:qs:slow                list  JSON of the latest statements over SLOW_QUERY_MS

``query_report(redis_url, window_minutes)`` sums the minute buckets of the rolling
window: count, total, mean and p95 per normalized statement, plus the slow list.
Processes that exit through ``os._exit`` (an RQ work horse) should call
:func:`flush_query_stats` at the end of each job.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Engine, event

log = logging.getLogger(__name__)

PREFIX = "les:qs:"
SQL_KEY = PREFIX + "sql"
SLOW_KEY = PREFIX + "slow"
#: latency samples kept per statement and minute (in process and in Redis)
SAMPLES_PER_MINUTE = 200
SLOW_KEPT = 100
#: minute buckets live this long: longer than any window the page offers
BUCKET_TTL_SECONDS = 3600 + 120
MAX_SQL_LENGTH = 2000

# -- normalization -------------------------------------------------------------------------
_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*", re.DOTALL)
_STRINGS = re.compile(r"'(?:[^']|'')*'")
_PARAMS = re.compile(r"%\(\w+\)s|%s|\$\d+|(?<![:\w]):\w+|\?")
_NUMBERS = re.compile(r"(?<![\w\"'.])-?\d+(?:\.\d+)?(?![\w\"])")
_IN_LIST = re.compile(r"\bIN\s*\(\s*(?:\?\s*,\s*)*\?\s*\)", re.IGNORECASE)
_POSTCOMPILE = re.compile(r"\(\s*\[POSTCOMPILE_\w+\]\s*\)|\[POSTCOMPILE_\w+\]")
_VALUES_ROWS = re.compile(r"(\(\s*[?,\s]*\))(?:\s*,\s*\(\s*[?,\s]*\))+")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=4096)
def normalize_sql(statement: str) -> str:
    """One shape per statement: ``SELECT * FROM t WHERE id IN (1, 2) AND n = 'x'`` ->
    ``SELECT * FROM t WHERE id IN (?...) AND n = ?``."""
    sql = _COMMENTS.sub(" ", statement)
    sql = _STRINGS.sub("?", sql)
    sql = _POSTCOMPILE.sub("(?)", sql)
    sql = _PARAMS.sub("?", sql)
    sql = _NUMBERS.sub("?", sql)
    sql = _SPACES.sub(" ", sql).strip()
    sql = _IN_LIST.sub("IN (?...)", sql)
    sql = _VALUES_ROWS.sub(r"\1, ...", sql)
    return sql[:MAX_SQL_LENGTH]


def statement_id(normalized: str) -> str:
    return hashlib.sha1(normalized.encode(), usedforsecurity=False).hexdigest()[:16]


# -- collection ----------------------------------------------------------------------------
@dataclass
class _Bucket:
    count: int = 0
    total_ms: float = 0.0
    samples: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if len(self.samples) < SAMPLES_PER_MINUTE:
            self.samples.append(ms)
        else:  # reservoir sampling keeps a fair sample of a busy minute
            slot = random.randrange(self.count)
            if slot < SAMPLES_PER_MINUTE:
                self.samples[slot] = ms


class QueryStats:
    """The buffer of one process, flushed to Redis."""

    def __init__(
        self,
        redis_url: str,
        process: str = "web",
        slow_ms: float = 100.0,
        flush_interval: float = 1.0,
    ) -> None:
        self.redis_url = redis_url
        self.process = process
        self.slow_ms = slow_ms
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        #: held while a flush sends: a flush returns once what was buffered before
        #: it reached Redis, even if another thread had taken it to send
        self._flush_lock = threading.Lock()
        self._buffer: dict[tuple[int, str], _Bucket] = {}
        self._slow: list[str] = []
        self._last_flush = time.monotonic()
        self._client: redis.Redis | None = None

    # hot path
    def record(self, statement: str, ms: float, now: float | None = None) -> None:
        normalized = normalize_sql(statement)
        now = time.time() if now is None else now
        key = (int(now // 60), normalized)
        with self._lock:
            bucket = self._buffer.get(key)
            if bucket is None:
                bucket = self._buffer[key] = _Bucket()
            bucket.add(ms)
            if ms >= self.slow_ms and len(self._slow) < SLOW_KEPT:
                self._slow.append(
                    json.dumps(
                        {"at": now, "ms": round(ms, 3), "sql": normalized, "process": self.process}
                    )
                )
            due = time.monotonic() - self._last_flush >= self.flush_interval
        if due:  # a request never waits for another thread's flush
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Send the buffer to Redis (one pipeline); on a Redis error the data is dropped
        (timings are best effort and must never slow or break the application).

        A flush that finds another one sending waits for it (``wait``), so that an RQ
        work horse's flush before ``os._exit`` does not return while the idle flusher
        thread is still sending its statements; without ``wait`` it leaves the buffer
        to the next flush."""
        if not self._flush_lock.acquire(blocking=wait):
            return
        try:
            self._send()
        finally:
            self._flush_lock.release()

    def _send(self) -> None:
        with self._lock:
            buffer, slow = self._buffer, self._slow
            self._buffer, self._slow = {}, []
            self._last_flush = time.monotonic()
        if not buffer and not slow:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            names: dict[str, str] = {}
            for (minute, normalized), bucket in buffer.items():
                sid = statement_id(normalized)
                names[sid] = normalized
                hkey = f"{PREFIX}m:{minute}"
                pipe.hincrby(hkey, f"{sid}:n", bucket.count)
                pipe.hincrbyfloat(hkey, f"{sid}:t", round(bucket.total_ms, 3))
                pipe.expire(hkey, BUCKET_TTL_SECONDS)
                lkey = f"{PREFIX}l:{minute}:{sid}"
                pipe.lpush(lkey, *(round(ms, 3) for ms in bucket.samples))
                pipe.ltrim(lkey, 0, SAMPLES_PER_MINUTE - 1)
                pipe.expire(lkey, BUCKET_TTL_SECONDS)
            if names:
                pipe.hset(SQL_KEY, mapping=names)
                pipe.expire(SQL_KEY, BUCKET_TTL_SECONDS)
            if slow:
                pipe.lpush(SLOW_KEY, *slow)
                pipe.ltrim(SLOW_KEY, 0, SLOW_KEPT - 1)
                pipe.expire(SLOW_KEY, 24 * 3600)
            # telemetry about queries is not traced itself: a flush from a request
            # would add a span to its trace, one from the flusher thread a trace of
            # its own every second
            with suppress_instrumentation():
                pipe.execute()
        except redis.RedisError as error:
            log.debug("query stats not flushed: %s", error)

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        return self._client

    def _after_fork(self) -> None:
        """In a forked child: fresh lock and connection; the parent's buffer is the
        parent's to flush."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffer, self._slow = {}, []
        self._client = None


_collectors: weakref.WeakKeyDictionary[Engine, QueryStats] = weakref.WeakKeyDictionary()
_flusher: dict[str, Any] = {"thread": None, "pid": None}
_T0 = "les_query_stats_t0"
#: how often the shared daemon thread flushes idle collectors
IDLE_FLUSH_SECONDS = 1.0


def _flush_loop() -> None:
    while True:
        time.sleep(IDLE_FLUSH_SECONDS)
        flush_query_stats()


def _ensure_flusher() -> None:
    """One daemon thread per process flushes every collector's idle buffer (not in a
    gunicorn master that forks workers: see ``webapp.background_deferred``)."""
    if os.environ.get("LES_DEFER_BACKGROUND") == str(os.getpid()):
        return
    thread = _flusher["thread"]
    if thread is not None and thread.is_alive() and _flusher["pid"] == os.getpid():
        return
    thread = threading.Thread(target=_flush_loop, name="query-stats-flush", daemon=True)
    _flusher.update(thread=thread, pid=os.getpid())
    thread.start()


def _after_fork_in_child() -> None:
    for stats in list(_collectors.values()):
        stats._after_fork()
    _flusher.update(thread=None, pid=None)
    if _collectors:
        _ensure_flusher()


os.register_at_fork(after_in_child=_after_fork_in_child)


def init_query_stats(
    engine: Engine,
    redis_url: str,
    *,
    process: str = "web",
    slow_ms: float = 100.0,
    flush_interval: float = 1.0,
) -> QueryStats:
    """Time every statement of ``engine`` (and of engines derived from it with
    ``execution_options``) into the shared stats. Idempotent per engine."""
    existing = _collectors.get(engine)
    if existing is not None:  # e.g. create_app installed it; the caller knows better
        existing.process, existing.slow_ms = process, slow_ms
        return existing
    stats = QueryStats(redis_url, process, slow_ms, flush_interval)
    _collectors[engine] = stats

    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        conn.info.setdefault(_T0, []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        starts = conn.info.get(_T0)
        if starts:
            stats.record(statement, (time.perf_counter() - starts.pop()) * 1000.0)

    @event.listens_for(engine, "handle_error")
    def _error(context: Any) -> None:
        conn = context.connection
        if conn is not None and conn.info.get(_T0):
            conn.info[_T0].pop()

    _ensure_flusher()
    return stats


def flush_query_stats() -> None:
    """Flush every collector of this process now (end of an RQ job, before exit)."""
    for stats in list(_collectors.values()):
        stats.flush()


atexit.register(flush_query_stats)


# -- report --------------------------------------------------------------------------------
@dataclass
class StatementStats:
    sql: str
    count: int
    total_ms: float
    mean_ms: float
    p95_ms: float


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(int(-(-pct * len(ordered) // 100)), 1)  # ceil
    return ordered[min(rank, len(ordered)) - 1]


SORTS = {
    "total": lambda s: s.total_ms,
    "mean": lambda s: s.mean_ms,
    "p95": lambda s: s.p95_ms,
    "count": lambda s: s.count,
}


def query_report(
    client: redis.Redis,
    window_minutes: int = 5,
    sort: str = "total",
    limit: int = 100,
    now: float | None = None,
) -> list[StatementStats]:
    """Statements of the last ``window_minutes`` (this minute included), all processes."""
    now = time.time() if now is None else now
    current = int(now // 60)
    minutes = list(range(current - window_minutes + 1, current + 1))
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{PREFIX}m:{minute}")
    hashes = pipe.execute()
    counts: dict[str, int] = {}
    totals: dict[str, float] = {}
    present: dict[str, list[int]] = {}
    for minute, data in zip(minutes, hashes, strict=True):
        for raw_field, raw_value in data.items():
            sid, _, kind = raw_field.decode().rpartition(":")
            if kind == "n":
                counts[sid] = counts.get(sid, 0) + int(raw_value)
                present.setdefault(sid, []).append(minute)
            elif kind == "t":
                totals[sid] = totals.get(sid, 0.0) + float(raw_value)
    if not counts:
        return []
    pipe = client.pipeline(transaction=False)
    order = [(sid, minute) for sid, ms in present.items() for minute in ms]
    for sid, minute in order:
        pipe.lrange(f"{PREFIX}l:{minute}:{sid}", 0, -1)
    samples: dict[str, list[float]] = {}
    for (sid, _minute), values in zip(order, pipe.execute(), strict=True):
        samples.setdefault(sid, []).extend(float(v) for v in values)
    names = client.hmget(SQL_KEY, list(counts))
    report = []
    for sid, name in zip(counts, names, strict=True):
        count = counts[sid]
        total = totals.get(sid, 0.0)
        report.append(
            StatementStats(
                sql=name.decode() if name else f"(statement {sid})",
                count=count,
                total_ms=total,
                mean_ms=total / count if count else 0.0,
                p95_ms=percentile(samples.get(sid, []), 95),
            )
        )
    report.sort(key=SORTS.get(sort, SORTS["total"]), reverse=True)
    return report[:limit]


def slow_queries(client: redis.Redis, limit: int = SLOW_KEPT) -> list[dict[str, Any]]:
    """The latest statements over the slow threshold, newest first."""
    return [json.loads(raw) for raw in client.lrange(SLOW_KEY, 0, limit - 1)]


def init_app(app: Any) -> QueryStats | None:
    """The web process's hook (``create_app``); QUERY_STATS_ENABLED=false turns it off."""
    if not app.config["QUERY_STATS_ENABLED"]:
        return None
    from webapp.extensions import get_db

    return init_query_stats(
        get_db(app).engine,
        app.config["REDIS_URL"],
        process=process_role(),
        slow_ms=float(app.config.get("SLOW_QUERY_MS", 100.0)),
    )


def process_role(argv: list[str] | None = None) -> str:
    """``relay``, ``worker`` or ``web``, from the command line (``python -m workers.relay``,
    ``python -m workers``, ``rq worker``, gunicorn...), for the slow-query list."""
    import sys

    words = " ".join(sys.argv if argv is None else argv).lower()
    if "relay" in words:
        return "relay"
    if "worker" in words or " rq" in words:
        return "worker"
    return "web"
