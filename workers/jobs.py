"""RQ job functions. They receive ids and JSON only (never ORM objects) and open
their own transactions through the process's app."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from webapp.services.delivery import DEFAULT_LEASE_SECONDS
from workers import runtime


def handle_message(message_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict[str, Any]:
    """Run every async handler of outbox message ``message_id`` (see
    :meth:`webapp.services.delivery.Deliverer.process`). The relay's trace context
    travels in ``job.meta["trace_context"]``."""
    job = get_current_job()
    trace_context = job.meta.get("trace_context") if job is not None else None
    try:
        outcome = runtime.get_deliverer().process(message_id, trace_context, lease_seconds)
    finally:
        _flush_spans()  # a work horse ends with os._exit: export its spans first
    return {"status": outcome.status, "type": outcome.message_type}


def cleanup_outbox() -> dict[str, Any]:
    """Delete processed outbox messages older than ``OUTBOX_CLEANUP_DAYS``."""
    from webapp.extensions import get_db
    from webapp.services.outbox_maintenance import cleanup_processed

    app = runtime.get_app()
    deleted = cleanup_processed(get_db(app), days=int(app.config["OUTBOX_CLEANUP_DAYS"]))
    return {"deleted": deleted}


def _flush_spans() -> None:
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(2000)
