"""The RQ worker pool: ``python -m workers``.

Runs ``BACKGROUND_MAX_CONCURRENCY`` RQ worker processes (forked from this one;
each drops the inherited database connections first), with the RQ scheduler. Each
worker runs its jobs itself, or with ``--fork-per-job`` in a fresh work horse.
SIGTERM or SIGINT: every worker finishes its current job, then exits.
The pool process publishes the ``worker`` heartbeat and schedules the outbox
cleanup job.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument(
        "--concurrency", type=int, help="worker processes (default BACKGROUND_MAX_CONCURRENCY)"
    )
    parser.add_argument(
        "--fork-per-job", action="store_true", help="run each job in a fresh work horse"
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1")
    args = parser.parse_args(argv)

    if args.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # the handlers run in forked work horses: collect their metrics through files
        # (must be set before prometheus_client is imported)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="les-worker-metrics-")
    elif args.metrics_port:  # a fresh start: no files of an earlier run
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))

    # the pool process forks the worker processes: it must run no background threads
    # of its own (see webapp.background_deferred); each worker starts its own
    os.environ["LES_DEFER_BACKGROUND"] = str(os.getpid())
    from workers.worker import run_pool

    return run_pool(
        concurrency=args.concurrency,
        burst=args.burst,
        metrics_port=args.metrics_port,
        fork_per_job=args.fork_per_job,
    )


if __name__ == "__main__":
    sys.exit(main())
