"""Per-process state of the background processes: the app (settings, engine), the
mailer and the deliverer, created once and shared with forked work horses."""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

from flask import Flask

from webapp.services.delivery import Deliverer

#: comma-separated extra handler modules to import (tests register fault handlers)
EXTRA_HANDLERS_ENV = "LES_EXTRA_HANDLER_MODULES"

_app: Flask | None = None
_deliverer: Deliverer | None = None
#: an ``OutboxWorker`` is working in this process, running its jobs itself: the
#: deliverer keeps a job's database connection for the next job (a forked work
#: horse's job is its last)
keep_job_connections = False


def get_app(config: dict[str, Any] | None = None) -> Flask:
    """The process's app, built from the environment on first use."""
    global _app
    if _app is None:
        from webapp import create_app

        # no pages are served here: no process-local cache copies to keep coherent
        _app = create_app({"CACHE_NEAR": "false", **(config or {})})
        load_extra_handlers()
    return _app


def load_extra_handlers() -> None:
    from webapp.services import messagebus

    messagebus.load_handlers()
    for name in filter(None, os.environ.get(EXTRA_HANDLERS_ENV, "").split(",")):
        importlib.import_module(name.strip())


def get_deliverer() -> Deliverer:
    global _deliverer
    if _deliverer is None:
        from webapp.adapters.mail import make_mailer
        from webapp.extensions import get_db

        app = get_app()
        mailer = make_mailer(app.config, keep_alive=True)
        mailer.preload()
        _deliverer = Deliverer(get_db(app), mailer, app.config)
    _deliverer.worker_name = worker_name()
    _deliverer.keep_connection = keep_job_connections
    return _deliverer


def release_job_connection() -> None:
    """The worker stops: the connection kept between its jobs goes back to the pool."""
    if _deliverer is not None:
        _deliverer.release_connection()


def worker_name() -> str:
    """``host/rq-worker-name/pid``: who made an attempt, for the history view."""
    rq_name = os.environ.get("RQ_WORKER_ID", "")
    return f"{socket.gethostname()}/{rq_name[:12] or 'inline'}/{os.getpid()}"


def after_fork() -> None:
    """In a forked child: never reuse the parent's pooled connections."""
    if _app is not None:
        from webapp.extensions import get_db

        get_db(_app).engine.dispose(close=False)


def redis_client(url: str | None = None, **options: Any) -> Any:
    import redis

    return redis.Redis.from_url(url or get_app().config["REDIS_URL"], **options)
