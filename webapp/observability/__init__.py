"""Tracing, metrics and logging set-up.

``init_app(app)`` is called by ``create_app`` (web, relay and worker processes all
build the app): JSON logs, the tracer provider and instrumentation, request ids,
HTTP metrics and the ``/metrics`` endpoint.

``/metrics`` access: when ``METRICS_TOKEN`` is set, a request needs
``Authorization: Bearer <METRICS_TOKEN>``. In production without a token only
direct loopback requests are answered (not ones relayed by a proxy). In
development and testing it is open.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, abort, g, request
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from webapp.observability import collectors, logs, tracing

log = logging.getLogger("les.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def service_name(config: dict[str, Any]) -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or str(config.get("SERVICE_NAME") or "les-web")


def init_app(app: Flask) -> None:
    """Wire observability into ``app``; call after ``init_db`` (the engine is traced
    explicitly, and ``create_engine`` is patched for engines made later)."""
    config = app.config
    service = service_name(config)
    logs.configure_from_config(config, service)
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)  # records go to the root JSON handler

    tracing.instrument_libraries()
    tracing.configure_tracing(service, str(config.get("ENV", "development")))
    collectors.install_db_observers(
        float(config.get("SLOW_QUERY_MS", 100.0)),
        bool(config.get("DB_QUERY_LOGGING", False)),
        float(config.get("SLOW_QUERY_LOG_SECONDS", 1.0)),
    )
    db = app.extensions.get("les.db")
    gauges = None
    if db is not None:
        tracing.instrument_engine(db.engine)
        if collectors.count_promotions not in db.after_commit:
            db.after_commit.append(collectors.count_promotions)
        gauges = collectors.BusinessGauges(db.engine, str(config.get("REDIS_URL") or ""))
    app.extensions["les.business_gauges"] = gauges
    tracing.instrument_flask(app)
    _request_ids(app)
    _http_metrics(app, gauges)


# -- request ids and the request log line ------------------------------------------------
def _request_ids(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        span = trace.get_current_span()
        context = span.get_span_context()
        if _REQUEST_ID.match(incoming):
            g.request_id = incoming
        elif context.is_valid:  # the trace id: a log line leads straight to its trace
            g.request_id = format(context.trace_id, "032x")
        else:  # tracing off (OTEL_SDK_DISABLED)
            g.request_id = uuid.uuid4().hex
        g.les_started = time.perf_counter()
        g.les_log_token = logs.correlation_id.set(g.request_id)
        if span.is_recording():
            span.set_attribute("http.request_id", g.request_id)
        else:  # not sampled: no database or Redis spans to build
            g.les_untraced = tracing.skip_unrecorded_children(span)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        started = g.get("les_started")
        if started is None or request.endpoint == "les_metrics":
            return response
        status = response.status_code
        # successful requests are the high-volume lines: sampled, and decided before
        # the record is built (most of them are dropped)
        level = logging.WARNING if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return response
        kept = logs.sample_now() if status < 400 else {}
        if kept is not None:
            log.log(
                level,
                "%s %s %s",
                request.method,
                request.path,
                status,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": request.url_rule.rule if request.url_rule else None,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    **kept,
                },
            )
        return response

    @app.teardown_request
    def _reset(error: BaseException | None) -> None:
        untraced = g.pop("les_untraced", None)
        if untraced is not None:  # before the Flask instrumentation ends its span
            otel_context.detach(untraced)
        token = g.pop("les_log_token", None)
        if token is not None:
            try:
                logs.correlation_id.reset(token)
            except ValueError:  # set in another context (streamed response)
                logs.correlation_id.set(None)


# -- HTTP metrics and /metrics -------------------------------------------------------------
class _Registries:
    """Several registries exposed as one (the process-wide REGISTRY holds the custom
    metrics; each app has its own registry for the HTTP metrics)."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Any:
        for registry in self.registries:
            yield from registry.collect()


def _http_metrics(app: Flask, gauges: collectors.BusinessGauges | None) -> None:
    registry = CollectorRegistry()
    options: dict[str, Any] = {
        "path": None,
        "registry": registry,
        "group_by": "url_rule",
        "excluded_paths": ["^/metrics$"],
        "buckets": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    }
    if multiprocess_mode():
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        exporter: Any = GunicornInternalPrometheusMetrics(app=None, **options)
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        exporter = PrometheusMetrics(app=None, **options)
    exporter.init_app(app)
    app.extensions["les.http_metrics"] = exporter

    def metrics() -> Response:
        _authorize_scrape(app)
        if gauges is not None:
            gauges.refresh()
        return Response(*render_metrics(registry, request.headers.get("Accept")))

    app.add_url_rule("/metrics", "les_metrics", metrics, methods=["GET"])


def render_metrics(app_registry: CollectorRegistry | None, accept: str | None) -> tuple[Any, ...]:
    """(body, status, headers) of a scrape: every process's files under gunicorn,
    else this process's registries."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        source: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = _Registries(REGISTRY, *([app_registry] if app_registry else []))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(source), 200, {"Content-Type": content_type, "Cache-Control": "no-store"}


def _authorize_scrape(app: Flask) -> None:
    token = str(app.config.get("METRICS_TOKEN") or "")
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            abort(
                Response(
                    "metrics need a bearer token\n",
                    401,
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
            )
        return
    if app.config.get("ENV") != "production":
        return
    relayed = request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded")
    if request.remote_addr not in _LOOPBACK or relayed:
        abort(403)
