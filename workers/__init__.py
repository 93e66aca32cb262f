"""Background processes: the outbox relay (``python -m workers.relay``) and the RQ
worker pool (``python -m workers``) that runs the asynchronous handlers."""

from __future__ import annotations

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
