"""Every Grafana panel query and every alert expression, evaluated by a real
Prometheus that scrapes the running web app (gunicorn, 2 workers), relay and worker
pool under a little traffic: each must parse and return data. The alert rules are
also unit-tested with ``promtool test rules``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import csrf_token_from, make_app
from tests.integration.observability_processes import (
    METRICS_TOKEN,
    ROOT,
    Gunicorn,
    app_env,
    free_port,
    wait_until,
)

GRAFANA = ROOT / "grafana"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
#: values of the dashboards' template variables when evaluated here
VARIABLES = {"$__rate_interval": "1m", "$route": ".*"}
_COMPARISON = re.compile(r"\s*(?:>|<|==|!=|>=|<=)\s*[0-9.e+-]+\s*$")


def dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{board['title']} / {panel['title']}", target["expr"]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((GRAFANA / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_promtool_unit_tests_fire_every_alert():
    tests = yaml.safe_load((GRAFANA / "prometheus" / "alerts_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == tested, "every alert needs a scenario where it fires"
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=GRAFANA / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "alerts.yml"],
        cwd=GRAFANA / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboards_are_generated_from_the_builder(tmp_path: Path):
    """The JSON files are what ``grafana/build_dashboards.py`` writes (no hand edits)."""
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboards
    finally:
        sys.path.remove(str(GRAFANA))
    for name, (uid, title, panels) in build_dashboards.DASHBOARDS.items():
        expected = build_dashboards.dashboard(uid, title, panels)
        assert json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text()) == expected
    titles = {json.loads(p.read_text())["title"] for p in (GRAFANA / "dashboards").glob("*")}
    assert titles == {
        "LES / Service",
        "LES / Outbox & workers",
        "LES / Cache",
        "LES / Database",
        "LES / Business",
    }


# -- the running stack --------------------------------------------------------------------
class Stack:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []
        self.web: Gunicorn | None = None

    def spawn(self, name: str, args: list[str], **extra: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            args,
            env=dict(self.env, **extra),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for file in self.files:
            file.close()
        if self.web is not None:
            self.web.stop()


def prometheus_config(stack_ports: dict[str, int], token_file: Path, alerts: Path) -> str:
    """The compose stack's prometheus.yml with loopback targets and 1 s intervals."""
    config = yaml.safe_load((GRAFANA / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(alerts)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"web", "relay", "worker"} <= set(jobs)
    for name, port in stack_ports.items():
        job = jobs[name]
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    jobs["web"]["authorization"]["credentials_file"] = str(token_file)
    jobs.pop("prometheus")
    config["scrape_configs"] = list(jobs.values())
    return yaml.safe_dump(config)


@pytest.fixture
def stack(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = app_env(
        postgres_url,
        redis_url,
        ENV="development",  # plain-http session cookies for the CSRF-protected forms
        MAILBOX_DIR=str(tmp_path / "mailbox"),
        OUTBOX_MAX_RETRIES="1",
        OUTBOX_RETRY_DELAY_SECONDS="0.2",
        LES_EXTRA_HANDLER_MODULES="tests.integration.observability_faults",
    )
    running = Stack(tmp_path, env)
    try:
        running.web = Gunicorn(env, workers=2, tmp=tmp_path)
        relay_port, worker_port, prom_port = free_port(), free_port(), free_port()
        relay = running.spawn(
            "relay", [sys.executable, "-m", "workers.relay", "--metrics-port", str(relay_port)]
        )
        worker_metrics = tmp_path / "worker-metrics"
        worker_metrics.mkdir()
        worker = running.spawn(
            "worker",
            [sys.executable, "-m", "workers", "--concurrency=1", f"--metrics-port={worker_port}"],
            PROMETHEUS_MULTIPROC_DIR=str(worker_metrics),
        )
        for name, proc, port in (("relay", relay, relay_port), ("worker", worker, worker_port)):
            try:
                wait_until(
                    lambda p=port: httpx.get(f"http://127.0.0.1:{p}/metrics").status_code == 200,
                    60,
                    f"the {name} metrics port",
                    proc,
                )
            except AssertionError as error:
                raise AssertionError(f"{error}\n{running.log(name)}") from None

        token_file = tmp_path / "metrics_token"
        token_file.write_text(METRICS_TOKEN)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            prometheus_config(
                {"web": running.web.port, "relay": relay_port, "worker": worker_port},
                token_file,
                GRAFANA / "prometheus" / "alerts.yml",
            )
        )
        prometheus = running.spawn(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
        )
        prom_url = f"http://127.0.0.1:{prom_port}"
        try:
            wait_until(
                lambda: httpx.get(prom_url + "/-/ready").status_code == 200,
                30,
                "Prometheus to be ready",
                prometheus,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{running.log('prometheus')}") from None
        yield {
            "web": running.web.url,
            "prometheus": prom_url,
            "database_url": postgres_url,
            "redis_url": redis_url,
            "logs": running.log,
        }
    finally:
        running.stop()


def query(prom_url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(prom_url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]  # type: ignore[no-any-return]


def drive_traffic(web: str, database_url: str, redis_url: str) -> None:
    from webapp.extensions import get_db
    from webapp.services.events import EventDetails, create_event

    app = make_app(database_url, redis_url)
    start = datetime.now(UTC) + timedelta(days=5)
    small = create_event(
        get_db(app).unit_of_work,
        EventDetails("Small workshop", "Two seats", "Room 1", start, True),
        2,
    )
    big = create_event(
        get_db(app).unit_of_work,
        EventDetails("Big meetup", "Many seats", "Hall", start, True),
        50,
    )
    get_db(app).dispose()

    with httpx.Client(base_url=web, timeout=15) as client:
        for _ in range(3):
            assert client.get("/").status_code == 200
        assert client.get("/events/999999").status_code == 404
        status_pages = []
        for i, event_id in enumerate([small] * 4 + [big] * 2):
            page = client.get(f"/events/{event_id}")
            assert page.status_code == 200
            html = page.text
            token = re.search(r'name="idempotency_token" type="hidden" value="([0-9a-f]+)"', html)
            assert token, "no idempotency token on the event page"
            response = client.post(
                f"/events/{event_id}/register",
                data={
                    "csrf_token": csrf_token_from(html),
                    "idempotency_token": token.group(1),
                    "name": f"Person {i}",
                    "email": f"person{i}@example.com",
                },
            )
            assert response.status_code == 303, (response.status_code, response.text[-1500:])
            status_pages.append(response.headers["Location"])
        # the first person of the full event cancels: the first waitlisted is promoted
        confirm = client.get(status_pages[0] + "/cancel")
        cancelled = client.post(
            status_pages[0] + "/cancel", data={"csrf_token": csrf_token_from(confirm.text)}
        )
        assert cancelled.status_code == 303
        for page in status_pages:
            assert client.get(page).status_code == 200


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_every_panel_and_alert_query_returns_data(stack):
    drive_traffic(stack["web"], stack["database_url"], stack["redis_url"])

    queries = [(name, substitute(expr)) for name, expr in dashboard_queries()]
    for rule in alert_rules():
        expr = " ".join(str(rule["expr"]).split())
        query(stack["prometheus"], expr)  # the full rule parses and evaluates
        signal = _COMPARISON.sub("", expr)
        assert signal != expr, f"{rule['alert']}: expected '<signal> <comparison>'"
        queries.append((f"alert {rule['alert']}", signal))

    empty: list[str] = []

    def all_have_data() -> bool:
        empty.clear()
        for name, expr in queries:
            if not query(stack["prometheus"], expr)["result"]:
                empty.append(f"{name}: {expr}")
        return not empty

    deadline = time.monotonic() + 60
    while not all_have_data():
        if time.monotonic() > deadline:
            details = "\n".join(empty)
            logs = "\n".join(f"--- {n}\n{stack['logs'](n)}" for n in ("relay", "worker"))
            raise AssertionError(f"queries without data:\n{details}\n{logs}")
        time.sleep(2)

    # the scrapes reached all three processes, and the traffic is what we sent
    up = query(stack["prometheus"], "up")["result"]
    assert {r["metric"]["job"]: r["value"][1] for r in up} == {
        "web": "1",
        "relay": "1",
        "worker": "1",
    }
    registered = query(stack["prometheus"], "sum by (outcome) (les_registrations_total)")
    outcomes = {r["metric"]["outcome"]: float(r["value"][1]) for r in registered["result"]}
    assert outcomes == {"confirmed": 4, "waitlisted": 2}
    promotions = query(stack["prometheus"], "sum(les_promotions_total)")["result"]
    assert float(promotions[0]["value"][1]) == 1
    failures = query(stack["prometheus"], "sum by (error_class) (les_handler_failures_total)")
    assert {r["metric"]["error_class"] for r in failures["result"]} == {"ObservabilityTestFailure"}
