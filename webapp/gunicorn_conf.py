"""Gunicorn settings of the web process.

    gunicorn -c webapp/gunicorn_conf.py "webapp:create_app()"

Environment: ``BIND`` (default 127.0.0.1:8000), ``WEB_CONCURRENCY`` (workers),
``GUNICORN_THREADS``, ``GUNICORN_PRELOAD`` (default on), ``GUNICORN_TIMEOUT``,
``GUNICORN_MAX_REQUESTS`` (default 50,000, with 10 % jitter),
``PROMETHEUS_MULTIPROC_DIR`` (default: a private temp dir), ``WEB_CPU_NICE`` (default
0; see ``webapp.cpu_priority``), plus the app's settings.

Prometheus multiprocess mode: the metrics directory is set before
``prometheus_client`` is imported and emptied at start; every worker writes its own
files, ``/metrics`` adds them up, and ``child_exit`` marks a dead worker so its
``live*`` gauges disappear. Each worker builds its own tracer provider and drops
the database connections it inherited from the master (``post_fork``).

Before it forks, the master loads the code the views would load on first use
(``webapp.warm_up``; each worker does it when the app is not preloaded) and freezes
its objects out of the garbage collector's full passes; each worker freezes its own
before its first request (``webapp.start_up_objects``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

# -- Prometheus multiprocess directory: before anything imports prometheus_client ----------
_metrics_dir = Path(
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR",
        str(Path(tempfile.gettempdir()) / f"les-prometheus-{os.getpid()}"),
    )
)
_metrics_dir.mkdir(parents=True, exist_ok=True)
for _stale in _metrics_dir.glob("*.db"):  # values of a previous run would be added up
    _stale.unlink()

# tracer providers are built per worker, after the fork (see post_fork)
os.environ["LES_DEFER_TRACER_PROVIDER"] = "1"
#: no background threads in the master (it forks): the workers start them in post_fork
os.environ["LES_DEFER_BACKGROUND"] = str(os.getpid())


def _web_cpu_priority() -> str | None:
    """``WEB_CPU_NICE`` > 0: the master, and so every worker and thread it starts, runs
    at that niceness, below the relay and the workers on the same machine."""
    from webapp.cpu_priority import lower_cpu_priority, parse_niceness

    niceness = parse_niceness(os.environ.get("WEB_CPU_NICE"), 0)
    return lower_cpu_priority(niceness) if niceness else None


_cpu_priority = _web_cpu_priority()

# -- server ---------------------------------------------------------------------------------
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", str(min(2 * (os.cpu_count() or 1) + 1, 8))))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
preload_app = os.environ.get("GUNICORN_PRELOAD", "true").lower() in {"1", "true", "yes", "on"}
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# recycle workers now and then (bounded memory; their live gauges go with them). Not
# too often: a new worker starts with an empty near cache, and at 5,000 the benchmark's
# workers (~450 req/s each) were replaced every ~11 s, which cost the cached event page
# a third of its throughput (577/597 vs 910/919 req/s at 32 clients, two A/B runs)
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "50000"))
max_requests_jitter = max_requests // 10
accesslog = None  # the app logs one JSON line per request (with its request id)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "les-web"
control_socket_disable = True  # one shared default path would clash between instances


def _json_logger_class() -> type:
    from gunicorn.glogging import Logger

    class JsonLogger(Logger):
        """Gunicorn's own lines (boot, worker exits) in the app's JSON format."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            from webapp.observability.logs import build_handler

            handler = build_handler(1.0)
            self.error_log.handlers = [handler]

    return JsonLogger


logger_class = _json_logger_class()


# -- hooks -------------------------------------------------------------------------------------
def on_starting(server: Any) -> None:
    if _cpu_priority:
        server.log.info("web CPU priority lowered (WEB_CPU_NICE): %s", _cpu_priority)


def when_ready(server: Any) -> None:
    """Before the first fork, with ``preload_app``: the code the views load on first
    use loaded once for every worker; then the master's objects (the whole app)
    frozen out of the collector's full passes."""
    _load_request_code(getattr(server.app, "callable", None), "web master")
    from webapp.start_up_objects import freeze_start_up_objects

    freeze_start_up_objects("web master")


def _load_request_code(app: Any, process: str) -> None:
    """``webapp.warm_up`` for a loaded app (None: not loaded in this process)."""
    if app is None or not hasattr(app, "jinja_env"):
        return
    from webapp.warm_up import load_request_code

    templates = load_request_code(app)
    logging.getLogger("les.warm_up").info(
        "%s: request code loaded before the first request (%d page templates compiled)",
        process,
        templates,
    )


def pre_fork(server: Any, worker: Any) -> None:
    """A worker (re)started later inherits what the master built since, frozen too."""
    from webapp.start_up_objects import freeze_before_fork

    freeze_before_fork()


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: its own tracer provider, and no inherited DB connections."""
    from webapp.observability import tracing

    service = os.environ.get("OTEL_SERVICE_NAME", "les-web")
    tracing.configure_tracing(service, os.environ.get("ENV", "development"), force=True)
    app = getattr(server.app, "callable", None)  # set when the app was preloaded
    db = getattr(app, "extensions", {}).get("les.db") if app is not None else None
    if db is not None:
        # the master's pooled connections must not be shared: forget, don't close them
        db.engine.dispose(close=False)
    if app is not None:  # the preloaded master started no threads: this worker does
        from webapp import start_background_work

        start_background_work(app)


def post_worker_init(worker: Any) -> None:
    """Before the worker's first request: the views' code loaded, when the app was
    not preloaded (a preloaded app's was loaded by the master); then the worker's own
    start-up (its tracer provider, threads and connections; the app too when it is
    not preloaded) frozen as well."""
    if not worker.cfg.preload_app:
        _load_request_code(getattr(worker, "wsgi", None), f"web worker {worker.pid}")
    from webapp.start_up_objects import freeze_start_up_objects

    freeze_start_up_objects(f"web worker {worker.pid}")


def child_exit(server: Any, worker: Any) -> None:
    """A worker died: drop its live gauges from the multiprocess files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_abort(worker: Any) -> None:
    logging.getLogger("gunicorn.error").warning("worker %s aborted (timeout)", worker.pid)
