"""The code the views load on first use, loaded before a web worker's first request:
after ``load_request_code`` an attendee's whole visit (event list, event page,
registration, status page, cancellation form and cancellation) imports no module and
compiles no template, where a fresh app without it does both; and gunicorn does it in
the master before forking (the app preloaded), or in each worker when the app is not
preloaded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import httpx
import pytest

from tests.integration.observability_processes import ROOT, Gunicorn, app_env
from tests.integration.outbox_support import log_tail, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_A_VISIT = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime, timedelta
    from bench.loadgen import form_fields
    from webapp import create_app
    from webapp.extensions import get_db
    from webapp.services import events
    from webapp.warm_up import load_request_code

    app = create_app({"ENV": "testing", "SECRET_KEY": "s", "DATABASE_URL": sys.argv[1],
                      "REDIS_URL": sys.argv[2], "RATELIMIT_ENABLED": False})
    details = events.EventDetails(title="Warm", description="d", venue="v",
                                  start_date=datetime.now(UTC) + timedelta(days=2))
    event_id = events.create_event(get_db(app).unit_of_work, details, 5)
    templates = load_request_code(app) if sys.argv[3] == "loaded" else 0
    modules, compiled = set(sys.modules), set(app.jinja_env.cache.keys())

    client = app.test_client()
    client.environ_base["HTTP_REFERER"] = "http://localhost/"
    steps = [client.get("/").status_code]
    page = client.get(f"/events/{event_id}")
    fields = form_fields(page.data)
    fields.update(name="Wes Warm", email="wes@example.com")
    posted = client.post(f"/events/{event_id}/register", data=fields)
    if posted.status_code != 303:
        raise SystemExit(f"registration refused: {posted.status_code} {posted.text[-2500:]}")
    status = client.get(posted.headers["Location"])
    cancel = client.get(posted.headers["Location"] + "/cancel")
    cancelled = client.post(posted.headers["Location"] + "/cancel", data=form_fields(cancel.data))
    steps += [page.status_code, posted.status_code, status.status_code, cancel.status_code,
              cancelled.status_code]
    print(json.dumps({
        "steps": steps, "templates": templates,
        "imported": sorted(set(sys.modules) - modules),
        "compiled": sorted(str(key[1]) for key in set(app.jinja_env.cache.keys()) - compiled),
    }))
    """
)


def _visit(postgres_url: str, redis_url: str, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _A_VISIT, postgres_url, redis_url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_visit_after_the_warm_up_imports_no_module_and_compiles_no_template(
    postgres_url, redis_url
):
    cold = _visit(postgres_url, redis_url, "fresh")
    assert cold["steps"] == [200, 200, 303, 200, 200, 303]
    assert "email_validator" in cold["imported"]  # what the warm-up is for
    assert "public/event.html" in cold["compiled"] and "base.html" in cold["compiled"]

    warm = _visit(postgres_url, redis_url, "loaded")
    assert warm["steps"] == [200, 200, 303, 200, 200, 303]
    assert warm["templates"] >= 30  # every page template, the mails' left to the mailer
    assert warm["imported"] == [] and warm["compiled"] == [], warm


_LOADED = re.compile(r"(web master|web worker \d+): request code loaded .*?\((\d+) page templates")


@pytest.mark.slow
@pytest.mark.parametrize("preload", ["true", "false"])
def test_gunicorn_loads_the_request_code_before_the_first_request(
    postgres_url, redis_url, tmp_path, preload
):
    env = app_env(postgres_url, redis_url, LOG_LEVEL="INFO", GUNICORN_PRELOAD=preload)
    server = Gunicorn(env, workers=2, tmp=tmp_path)
    try:
        wanted = 1 if preload == "true" else 2  # the master once, or each worker
        wait_until(
            lambda: len(_LOADED.findall(server.log_path.read_text())) == wanted,
            20,
            describe=lambda: log_tail(server.log_path),
        )
        loaded = dict(_LOADED.findall(server.log_path.read_text()))
        if preload == "true":
            assert list(loaded) == ["web master"]
        else:
            assert all(who.startswith("web worker") for who in loaded), loaded
        assert all(int(count) >= 30 for count in loaded.values()), loaded
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
    finally:
        server.stop()
