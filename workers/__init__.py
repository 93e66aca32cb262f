"""Background processes: the outbox relay (``python -m workers.relay``) and the RQ
worker pool (``python -m workers``) that runs the asynchronous handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rq.job import Job

#: queue of outbox message jobs (one or more messages per job; job id = first message id)
OUTBOX_QUEUE = "outbox"
#: periodic housekeeping (cleanup of processed outbox messages)
MAINTENANCE_QUEUE = "maintenance"
#: every queue a worker listens on, in priority order
QUEUES = (OUTBOX_QUEUE, MAINTENANCE_QUEUE)

#: dotted paths of the job functions (the relay enqueues by name, without importing)
HANDLE_MESSAGES_JOB = "workers.jobs.handle_messages"
#: the one-message job of earlier releases (jobs still queued at an upgrade run)
HANDLE_MESSAGE_JOB = "workers.jobs.handle_message"
CLEANUP_JOB = "workers.jobs.cleanup_outbox"


def job_message_ids(job: Job) -> list[str]:
    """The outbox message ids an RQ job handles (none for other jobs)."""
    if job.func_name == HANDLE_MESSAGES_JOB and job.args:
        return [str(m) for m in job.args[0]]
    if job.func_name == HANDLE_MESSAGE_JOB and job.args:
        return [str(job.args[0])]
    return []
