"""The tracer provider a real process builds: with no ``OTEL_TRACES_SAMPLER`` it records
at most ``TRACES_PER_SECOND`` new traces a second; with one, that sampler decides;
a bad ``TRACES_PER_SECOND`` stops the start (also in gunicorn's master, which
builds no provider itself). Spans go to the console exporter and are counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROCESS = """
import json, sys, time
from webapp import create_app
app = create_app({"DATABASE_URL": sys.argv[1], "SECRET_KEY": "s" * 32, "ENV": "testing"})
from sqlalchemy import text
from webapp.extensions import get_db
with get_db(app).engine.connect() as conn:  # lone queries, as a background thread makes
    for _ in range(20):
        conn.execute(text("SELECT 1"))
client = app.test_client()
started = time.monotonic()
for _ in range(30):
    assert client.get("/login").status_code == 200
print(json.dumps({"burst_seconds": time.monotonic() - started}), file=sys.stderr)
"""


def run(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACES_"))}
    env |= {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "les-web", **settings}
    return subprocess.run(
        [sys.executable, "-c", _PROCESS, f"sqlite:///{tmp_path / 'app.sqlite3'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def server_spans(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.count('"kind": "SpanKind.SERVER"')


def burst_seconds(done: subprocess.CompletedProcess[str]) -> float:
    line = next(x for x in done.stderr.splitlines() if x.startswith('{"burst_seconds"'))
    return float(json.loads(line)["burst_seconds"])


def test_by_default_a_burst_of_requests_records_only_the_budget(tmp_path: Path) -> None:
    done = run(tmp_path, TRACES_PER_SECOND="3")
    recorded = server_spans(done)
    # 3 at once, plus what the budget refilled while the 30 requests ran; the lone
    # queries made before (outside any request) are not recorded and spent none of it
    assert 3 <= recorded <= 3 + int(burst_seconds(done) * 3) + 1 < 30, recorded
    assert "SELECT 1" not in done.stdout


def test_an_opentelemetry_sampler_in_the_environment_records_every_request(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, TRACES_PER_SECOND="3", OTEL_TRACES_SAMPLER="parentbased_always_on")
    assert server_spans(done) == 30
    assert done.stdout.count('"db.statement": "SELECT 1"') == 20


def test_a_bad_traces_per_second_stops_the_start_even_with_the_provider_deferred(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, TRACES_PER_SECOND="lots", LES_DEFER_TRACER_PROVIDER="1")
    assert done.returncode != 0
    assert "TRACES_PER_SECOND must be a number above 0" in done.stderr
    assert "'lots'" in done.stderr
