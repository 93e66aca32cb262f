"""Settings from environment variables, with the defaults of the performance plan.

Every key can be overridden by an environment variable of the same name, or by
``create_app(config={...})`` (tests).
"""

from __future__ import annotations

import os
from typing import Any

#: (key, default, type). Booleans accept 1/true/yes/on.
_SETTINGS: list[tuple[str, Any, type]] = [
    # where things live
    ("ENV", "development", str),  # development | production | testing
    ("DATABASE_URL", "sqlite:///var/les.sqlite3", str),
    ("REDIS_URL", "redis://127.0.0.1:6379/0", str),  # RQ queues, rate limits, heartbeats
    ("CACHE_REDIS_URL", "", str),  # default: REDIS_URL with the next database number
    ("PUBLIC_BASE_URL", "http://127.0.0.1:8000", str),  # links in mails
    ("SECRET_KEY", "", str),
    ("LOG_LEVEL", "", str),  # default per ENV
    ("LOG_SAMPLE_RATE", 0.1, float),  # share of high-volume debug/perf lines kept
    # Performance.Caching (TTLs in seconds)
    ("CACHE_ENABLED", True, bool),
    ("CACHE_TTL_EVENT_DETAILS", 300, int),
    ("CACHE_TTL_USER_INFORMATION", 600, int),
    ("CACHE_TTL_WAITLIST_POSITIONS", 60, int),
    ("CACHE_TTL_REGISTRATION_COUNTS", 120, int),
    ("CACHE_TTL_PAGE_OUTPUT", 30, int),
    ("CACHE_SOCKET_TIMEOUT", 0.25, float),
    ("CACHE_WARM", "auto", str),  # auto: warm at start and after invalidation unless testing
    ("CACHE_RETRY_AFTER_SECONDS", 1.0, float),  # skip the cache this long after an error
    ("CACHE_ERROR_LOG_INTERVAL_SECONDS", 30.0, float),  # one warning per interval
    # process-local first level, kept coherent over Redis pub/sub (webapp/adapters/near_cache)
    ("CACHE_NEAR", "auto", str),  # auto: on except under ENV=testing
    ("CACHE_NEAR_REGIONS", "event_details,registration_counts,page_output", str),
    ("CACHE_NEAR_TTL_SECONDS", 30.0, float),
    ("CACHE_NEAR_MAX_ENTRIES", 10_000, int),
    # Performance.BackgroundProcessing
    ("BACKGROUND_MAX_CONCURRENCY", 4, int),
    # jobs the relay spreads a small batch over while the queue is empty; 0: the worker
    # processes, at most the CPU cores (workers/relay.py spread_jobs)
    ("RELAY_SPREAD_JOBS", 0, int),
    ("OUTBOX_MAX_RETRIES", 3, int),
    ("OUTBOX_RETRY_DELAY_SECONDS", 5.0, float),
    ("OUTBOX_CLEANUP_DAYS", 7, int),
    ("OUTBOX_OLDEST_PENDING_THRESHOLD_SECONDS", 60, int),
    ("OUTBOX_SYNC_HANDLERS", False, bool),  # baseline build: run async handlers inline
    # a queue move mails only the people it brings within this many places of a seat
    ("WAITLIST_NOTICE_MAX_POSITION", 10, int),
    # Performance.Database
    ("DB_POOL_SIZE", 10, int),
    ("DB_MAX_OVERFLOW", 10, int),
    ("DB_POOL_TIMEOUT", 5.0, float),
    ("DB_POOL_RECYCLE", 1800, int),
    ("DB_POOL_PING_IDLE_SECONDS", 2.0, float),  # ping connections idle longer than this
    ("DB_COMMAND_TIMEOUT", 30, int),
    ("DB_QUERY_LOGGING", False, bool),
    ("SLOW_QUERY_MS", 100.0, float),
    # at most one "slow query" line per statement kind and table this often (0: all)
    ("SLOW_QUERY_LOG_SECONDS", 1.0, float),
    ("QUERY_STATS_ENABLED", True, bool),  # SQL timings for the operator dashboard
    # limits and security
    ("RATELIMIT_REGISTRATION", "30 per minute", str),
    ("RATELIMIT_LOGIN", "10 per minute", str),
    ("RATELIMIT_ENABLED", True, bool),
    ("STATUS_TOKEN_MAX_AGE_DAYS", 365, int),
    ("STATUS_POLL_SECONDS", 5.0, float),  # htmx refresh of the attendee status page
    ("RECENT_LOGIN_MINUTES", 15, int),
    ("METRICS_TOKEN", "", str),
    # mail
    ("MAIL_FROM", "Live Events <events@example.test>", str),
    ("SMTP_HOST", "", str),
    ("SMTP_PORT", 25, int),
    ("SMTP_USE_TLS", False, bool),
    ("SMTP_USE_SSL", False, bool),
    ("SMTP_USERNAME", "", str),
    ("SMTP_PASSWORD", "", str),
    ("SMTP_TIMEOUT", 10.0, float),
    ("MAILBOX_DIR", "var/mailbox", str),  # used when SMTP_HOST is empty
]

_TRUE = {"1", "true", "yes", "on"}


def _convert(value: Any, kind: type) -> Any:
    if kind is bool and isinstance(value, str):
        return value.strip().lower() in _TRUE
    return kind(value)


def next_redis_db(url: str) -> str:
    """``redis://host:6379/0`` -> ``redis://host:6379/1`` (also unix:// ``?db=``)."""
    if url.startswith("unix://"):
        base, _, query = url.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        params["db"] = str(int(params.get("db", "0")) + 1)
        return base + "?" + "&".join(f"{k}={v}" for k, v in params.items())
    head, _, tail = url.rpartition("/")
    if head.endswith("/") or not tail.isdigit():  # no database number in the URL
        return url.rstrip("/") + "/1"
    return f"{head}/{int(tail) + 1}"


def default(key: str) -> Any:
    """The built-in default of a setting (what runs when nothing overrides it)."""
    for name, value, _kind in _SETTINGS:
        if name == key:
            return value
    raise KeyError(key)


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    overrides = overrides or {}
    config: dict[str, Any] = {}
    for key, default, kind in _SETTINGS:
        if key in overrides:
            config[key] = overrides[key]
        elif key in os.environ:
            config[key] = _convert(os.environ[key], kind)
        else:
            config[key] = default
    for key, value in overrides.items():
        config.setdefault(key, value)
    if not config["CACHE_REDIS_URL"]:
        config["CACHE_REDIS_URL"] = next_redis_db(config["REDIS_URL"])
    if not config["LOG_LEVEL"]:
        config["LOG_LEVEL"] = {"production": "INFO", "testing": "WARNING"}.get(
            config["ENV"], "DEBUG"
        )
    if config["ENV"] == "production" and not config["SECRET_KEY"]:
        raise RuntimeError("SECRET_KEY must be set in production")
    return config
