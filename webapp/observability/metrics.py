"""Custom Prometheus metrics, with bounded label sets.

Defined once here and imported where they are observed. Under gunicorn these
live in multiprocess mode (PROMETHEUS_MULTIPROC_DIR); gauges say how to combine
(``live*`` modes forget the workers gunicorn marked dead).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# -- database ----------------------------------------------------------------------------
DB_STATEMENT_SECONDS = Histogram(
    "les_db_statement_duration_seconds",
    "SQL statement duration",
    ["kind", "table"],  # kind: select/insert/update/delete/other; table: first table named
    buckets=_LATENCY_BUCKETS,
)
DB_POOL_IN_USE = Gauge(
    "les_db_pool_connections_in_use", "Connections checked out", multiprocess_mode="livesum"
)
DB_POOL_OVERFLOW = Gauge(
    "les_db_pool_overflow", "Connections beyond pool_size", multiprocess_mode="livesum"
)
DB_POOL_WAIT_SECONDS = Histogram(
    "les_db_pool_wait_seconds", "Time waiting for a pooled connection", buckets=_LATENCY_BUCKETS
)

# -- cache ------------------------------------------------------------------------------
CACHE_REQUESTS = Counter(
    "les_cache_requests_total", "Cache lookups by region and result", ["region", "result"]
)  # result: hit / miss / error

# -- outbox, relay, workers ---------------------------------------------------------------
OUTBOX_MESSAGES = Gauge(
    "les_outbox_messages", "Outbox messages by state", ["state"], multiprocess_mode="livemostrecent"
)  # state: pending / retrying / dead
OUTBOX_OLDEST_PENDING_SECONDS = Gauge(
    "les_outbox_oldest_pending_age_seconds",
    "Age of the oldest pending outbox message",
    multiprocess_mode="livemostrecent",
)
OUTBOX_TABLE_ROWS = Gauge(
    "les_outbox_table_rows",
    "Row versions of the outbox table by version (live / dead), from PostgreSQL",
    ["table", "version"],
    multiprocess_mode="livemostrecent",
)
OUTBOX_TABLE_LAST_VACUUM = Gauge(
    "les_outbox_table_last_vacuum_timestamp_seconds",
    "When PostgreSQL last vacuumed the outbox table (0: never since its statistics began)",
    ["table"],
    multiprocess_mode="livemostrecent",
)
RELAY_DISPATCH_SECONDS = Histogram(
    "les_relay_dispatch_latency_seconds",
    "Outbox message commit to RQ enqueue",
    buckets=_LATENCY_BUCKETS,
)
RELAY_DISPATCHED = Counter("les_relay_dispatched_total", "Messages enqueued by the relay")
HANDLER_SECONDS = Histogram(
    "les_handler_duration_seconds",
    "Async handler duration by message type: a message's handlers that run in "
    "transactions of their own (its database-only ones, the counters, run with the "
    "job's last transaction)",
    ["message_type"],
    buckets=_LATENCY_BUCKETS,
)
HANDLER_FAILURES = Counter(
    "les_handler_failures_total", "Async handler failures", ["message_type", "error_class"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "les_outbox_dead_lettered_total", "Messages that became dead letters", ["message_type"]
)
REPLAYS = Counter("les_outbox_replays_total", "Messages replayed by operators", ["actor"])
HEARTBEAT_TIMESTAMP = Gauge(
    "les_heartbeat_timestamp_seconds",
    "Last heartbeat of a background process",
    ["process"],  # relay / worker
    multiprocess_mode="max",
)

# -- business -----------------------------------------------------------------------------
REGISTRATIONS = Counter(
    "les_registrations_total", "Registrations by outcome", ["outcome"]
)  # outcome: confirmed / waitlisted / duplicate / rejected
PROMOTIONS = Counter("les_promotions_total", "Waitlisted people promoted to a seat")
MAILS_SENT = Counter(
    "les_mails_sent_total",
    "Mails handed to the SMTP server (or written to the mailbox folder)",
    ["template"],  # confirmation / promotion / waitlist_position
)
CANCELLATIONS = Counter("les_cancellations_total", "Registrations cancelled")
WAITLIST_LENGTH = Gauge(
    "les_waitlist_length",
    "Waitlist length of the top events",
    ["event"],  # bounded: the top N events only
    multiprocess_mode="livemostrecent",
)
EVENT_POPULARITY = Gauge(
    "les_event_registrations",
    "Registrations counted per event, top events only",
    ["event"],
    multiprocess_mode="livemostrecent",
)
