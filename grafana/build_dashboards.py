"""Writes the Grafana dashboards (grafana/dashboards/*.json) from the panel lists
below: ``python grafana/build_dashboards.py``. Every query is checked against a real
Prometheus by tests/integration/test_prometheus_dashboards.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
W = "$__rate_interval"
HTTP_BUCKETS = "flask_http_request_duration_seconds_bucket"

# (title, unit, [(expr, legend)], width)
Panel = tuple[str, str, list[tuple[str, str]], int]


def quantiles(metric: str, by: str, selector: str = "") -> list[tuple[str, str]]:
    legend_by = "".join(f"{{{{{label.strip()}}}}} " for label in by.split(",") if label.strip())
    return [
        (
            f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) "
            f"(rate({metric}{selector}[{W}])))",
            f"{legend_by}p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


SERVICE: list[Panel] = [
    (
        "Request rate by route",
        "reqps",
        [
            (
                "sum by (url_rule) (rate(flask_http_request_duration_seconds_count"
                f'{{url_rule=~"$route"}}[{W}]))',
                "{{url_rule}}",
            )
        ],
        12,
    ),
    (
        "Responses by status",
        "reqps",
        [(f"sum by (status) (rate(flask_http_request_total[{W}]))", "{{status}}")],
        12,
    ),
    (
        "5xx error ratio",
        "percentunit",
        [
            (
                f'(sum(rate(flask_http_request_total{{status=~"5.."}}[{W}])) or vector(0))'
                f" / sum(rate(flask_http_request_total[{W}]))",
                "5xx share",
            )
        ],
        12,
    ),
    (
        "Unhandled exceptions",
        "reqps",
        [
            (
                f"sum(rate(flask_http_request_exceptions_total[{W}])) or vector(0)",
                "exceptions",
            )
        ],
        12,
    ),
    (
        "Latency p50 / p95 / p99 by route",
        "s",
        quantiles(HTTP_BUCKETS, "url_rule", '{url_rule=~"$route"}'),
        24,
    ),
]

OUTBOX: list[Panel] = [
    (
        "Outbox backlog by state",
        "short",
        [("max by (state) (les_outbox_messages)", "{{state}}")],
        12,
    ),
    (
        "Oldest pending message age",
        "s",
        [("max(les_outbox_oldest_pending_age_seconds)", "oldest pending")],
        12,
    ),
    (
        "Dispatch latency (commit to enqueue)",
        "s",
        quantiles("les_relay_dispatch_latency_seconds_bucket", ""),
        12,
    ),
    (
        "Messages dispatched",
        "ops",
        [(f"sum(rate(les_relay_dispatched_total[{W}]))", "dispatched/s")],
        12,
    ),
    (
        "Messages waiting for a retry",
        "short",
        [('max(les_outbox_messages{state="retrying"})', "retrying")],
        8,
    ),
    (
        "Dead letters",
        "short",
        [
            ('max(les_outbox_messages{state="dead"})', "dead letters"),
            (
                "sum by (message_type) (increase(les_outbox_dead_lettered_total[1h]))",
                "new in 1h: {{message_type}}",
            ),
        ],
        8,
    ),
    (
        "Handler failures by type",
        "ops",
        [
            (
                f"sum by (message_type, error_class) (rate(les_handler_failures_total[{W}]))",
                "{{message_type}} {{error_class}}",
            )
        ],
        8,
    ),
    (
        "Handler duration p95 by message type",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, message_type) "
                f"(rate(les_handler_duration_seconds_bucket[{W}])))",
                "{{message_type}}",
            )
        ],
        12,
    ),
    (
        "Heartbeat age",
        "s",
        [("time() - max by (process) (les_heartbeat_timestamp_seconds)", "{{process}}")],
        12,
    ),
    (
        "Outbox table row versions (autovacuum cleans the dead ones)",
        "short",
        [
            ("max by (version) (les_outbox_table_rows)", "{{version}}"),
            (
                '1000 + 0.01 * max(les_outbox_table_rows{version="live"})',
                "autovacuum threshold",
            ),
        ],
        12,
    ),
    (
        "Time since the outbox table was vacuumed",
        "s",
        [("time() - max(les_outbox_table_last_vacuum_timestamp_seconds)", "since vacuum")],
        12,
    ),
]

CACHE: list[Panel] = [
    (
        "Hit rate by region",
        "percentunit",
        [
            (
                f'sum by (region) (rate(les_cache_requests_total{{result="hit"}}[{W}]))'
                f" / sum by (region) (rate(les_cache_requests_total[{W}]))",
                "{{region}}",
            )
        ],
        12,
    ),
    (
        "Lookups by region and result",
        "ops",
        [
            (
                f"sum by (region, result) (rate(les_cache_requests_total[{W}]))",
                "{{region}} {{result}}",
            )
        ],
        12,
    ),
]

DATABASE: list[Panel] = [
    (
        "Statement latency p95 by kind and table",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, kind, table) "
                f"(rate(les_db_statement_duration_seconds_bucket[{W}])))",
                "{{kind}} {{table}}",
            )
        ],
        12,
    ),
    (
        "Statements per second by kind",
        "ops",
        [
            (
                f"sum by (kind) (rate(les_db_statement_duration_seconds_count[{W}]))",
                "{{kind}}",
            )
        ],
        12,
    ),
    (
        "Pool connections in use",
        "short",
        [("sum by (job) (les_db_pool_connections_in_use)", "{{job}}")],
        8,
    ),
    ("Pool overflow", "short", [("sum by (job) (les_db_pool_overflow)", "{{job}}")], 8),
    (
        "Pool wait p95",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, job) "
                f"(rate(les_db_pool_wait_seconds_bucket[{W}])))",
                "{{job}}",
            )
        ],
        8,
    ),
]

BUSINESS: list[Panel] = [
    (
        "Registrations by outcome",
        "ops",
        [(f"sum by (outcome) (rate(les_registrations_total[{W}]))", "{{outcome}}")],
        12,
    ),
    (
        "Conversion: registrations per event page view",
        "percentunit",
        [
            (
                f'sum(rate(les_registrations_total{{outcome=~"confirmed|waitlisted"}}[{W}]))'
                " / sum(rate(flask_http_request_duration_seconds_count"
                f'{{url_rule="/events/<int:event_id>", method="GET"}}[{W}]))',
                "conversion",
            )
        ],
        12,
    ),
    (
        "Promotions and cancellations",
        "short",
        [
            ("sum(increase(les_promotions_total[1h]))", "promotions (1h)"),
            ("sum(increase(les_cancellations_total[1h]))", "cancellations (1h)"),
        ],
        8,
    ),
    (
        "Longest waitlists (top 10)",
        "short",
        [("topk(10, max by (event) (les_waitlist_length))", "event {{event}}")],
        8,
    ),
    (
        "Most popular events (top 10)",
        "short",
        [("topk(10, max by (event) (les_event_registrations))", "event {{event}}")],
        8,
    ),
    (
        "Mails sent by kind",
        "ops",
        [(f"sum by (template) (rate(les_mails_sent_total[{W}]))", "{{template}}")],
        24,
    ),
]

DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "service": ("les-service", "LES / Service", SERVICE),
    "outbox": ("les-outbox", "LES / Outbox & workers", OUTBOX),
    "cache": ("les-cache", "LES / Cache", CACHE),
    "database": ("les-database", "LES / Database", DATABASE),
    "business": ("les-business", "LES / Business", BUSINESS),
}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def templating(with_route: bool) -> dict[str, Any]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {"text": "Prometheus", "value": "prometheus"},
        }
    ]
    if with_route:
        variables.append(
            {
                "name": "route",
                "label": "Route",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {
                    "query": "label_values(flask_http_request_duration_seconds_count, url_rule)",
                    "refId": "route",
                },
                "definition": "label_values(flask_http_request_duration_seconds_count, url_rule)",
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "refresh": 2,
                "current": {"text": "All", "value": "$__all"},
            }
        )
    return {"list": variables}


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    built = []
    x = y = 0
    for index, (panel_title, unit, targets, width) in enumerate(panels, start=1):
        if x + width > 24:
            x, y = 0, y + 8
        built.append(
            {
                "id": index,
                "type": "timeseries",
                "title": panel_title,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        x += width
    uses_route = any("$route" in t[0] for p in panels for t in p[2])
    return {
        "uid": uid,
        "title": title,
        "tags": ["les"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": templating(uses_route),
        "annotations": {"list": []},
        "panels": built,
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (uid, title, panels) in DASHBOARDS.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(dashboard(uid, title, panels), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
