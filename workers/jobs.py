"""RQ job functions. They receive ids and JSON only (never ORM objects) and open
their own transactions through the process's app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job

from webapp.observability.tracing import instrumentation, lone_calls_unrecorded
from webapp.services.delivery import DEFAULT_LEASE_SECONDS
from workers import runtime


def handle_messages(
    message_ids: list[str], lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> dict[str, Any]:
    """Run every async handler of these outbox messages, in order (see
    :meth:`webapp.services.delivery.Deliverer.process_many`). The relay's trace
    context of each message travels in ``job.meta["trace_contexts"]``."""
    job = get_current_job()
    contexts = job.meta.get("trace_contexts") if job is not None else None
    with traced():
        outcomes = runtime.get_deliverer().process_many(message_ids, contexts, lease_seconds)
    return {"statuses": [outcome.status for outcome in outcomes]}


def handle_message(message_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict[str, Any]:
    """The one-message job of earlier releases: such jobs may still be queued when
    a new release starts."""
    job = get_current_job()
    trace_context = job.meta.get("trace_context") if job is not None else None
    with traced():
        outcome = runtime.get_deliverer().process(message_id, trace_context, lease_seconds)
    return {"status": outcome.status, "type": outcome.message_type}


def cleanup_outbox() -> dict[str, Any]:
    """Delete processed outbox messages older than ``OUTBOX_CLEANUP_DAYS``."""
    from webapp.extensions import get_db
    from webapp.services.outbox_maintenance import cleanup_processed

    app = runtime.get_app()
    with traced():
        deleted = cleanup_processed(get_db(app), days=int(app.config["OUTBOX_CLEANUP_DAYS"]))
    return {"deleted": deleted}


@contextmanager
def traced() -> Iterator[None]:
    """Spans again inside a job: the worker runs RQ's own Redis traffic with
    instrumentation suppressed (``workers.worker``). Where the sampler would drop
    them (``tracing.lone_calls_unrecorded``), the job's own calls outside a
    message's trace, its take-over and last transaction, stay without; each
    message's handlers get them when its trace is recorded (``continue_trace``)."""
    with instrumentation(enabled=not lone_calls_unrecorded()):
        yield
