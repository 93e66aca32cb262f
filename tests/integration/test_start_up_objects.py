"""Start-up objects frozen out of the garbage collector's full passes: in a built app
(the collector then walks a tenth of what it walked, and still frees what is built
later), and in the real web, relay and worker pool processes, which log how many
they froze before serving or forking."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import httpx
import pytest

from tests.integration.observability_processes import ROOT, Gunicorn, app_env
from tests.integration.outbox_support import (
    log_tail,
    process_env,
    start_relay,
    start_worker,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: an app built and warmed by a request tracks ~140,000 objects; the frozen count is
#: far above what any process froze before its app was built
SOME_APP = 50_000
FROZEN_LINE = re.compile(
    r"(web master|web worker \d+|relay|worker pool): (\d+) start-up objects frozen"
)

_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import gc, json, sys, weakref
    from webapp import create_app
    from webapp.start_up_objects import freeze_start_up_objects

    app = create_app({"ENV": "testing", "SECRET_KEY": "s", "DATABASE_URL": sys.argv[1],
                      "REDIS_URL": sys.argv[2], "RATELIMIT_ENABLED": False})
    first = app.test_client().get("/").status_code
    tracked_before = len(gc.get_objects())
    frozen = freeze_start_up_objects("test")
    tracked_after = len(gc.get_objects())

    class Node:
        pass

    a, b = Node(), Node()
    a.peer, b.peer = b, a
    cycle = weakref.ref(a)
    del a, b
    gc.collect()
    print(json.dumps({
        "first": first, "second": app.test_client().get("/").status_code,
        "tracked_before": tracked_before, "tracked_after": tracked_after,
        "frozen": frozen, "cycle_freed": cycle() is None,
    }))
    """
)


def test_a_built_app_frozen_leaves_the_collector_a_tenth_and_still_frees_new_cycles(
    postgres_url, redis_url
):
    done = subprocess.run(
        [sys.executable, "-c", _IN_A_FRESH_PROCESS, postgres_url, redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first"] == seen["second"] == 200
    assert seen["frozen"] >= SOME_APP
    assert seen["tracked_after"] < seen["tracked_before"] / 10, seen
    assert seen["cycle_freed"], "a cycle built after the freeze must still be collected"


def _frozen(log: str) -> dict[str, int]:
    return {who: int(count) for who, count in FROZEN_LINE.findall(log)}


@pytest.mark.slow
def test_gunicorn_freezes_in_the_master_before_forking_and_in_each_worker(
    postgres_url, redis_url, tmp_path
):
    env = app_env(postgres_url, redis_url, LOG_LEVEL="INFO")
    server = Gunicorn(env, workers=2, tmp=tmp_path)
    try:
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
        wait_until(
            lambda: len(_frozen(server.log_path.read_text())) == 3,
            20,
            describe=lambda: log_tail(server.log_path),
        )
        frozen = _frozen(server.log_path.read_text())
        assert frozen.pop("web master") >= SOME_APP  # the preloaded app, shared
        # each worker's count includes what it inherited frozen from the master
        assert len(frozen) == 2 and min(frozen.values()) >= SOME_APP, frozen
    finally:
        server.stop()


@pytest.mark.slow
def test_the_relay_and_the_worker_pool_freeze_before_their_work(postgres_url, redis_url, tmp_path):
    env = process_env(postgres_url, redis_url)
    relay = start_relay(tmp_path, env)
    pool = start_worker(tmp_path, env)
    try:
        for process, who in ((relay, "relay"), (pool, "worker pool")):
            wait_until(
                lambda p=process, w=who: w in _frozen(p.log()),
                30,
                describe=lambda p=process: log_tail(p.log_path),
            )
            assert _frozen(process.log())[who] >= SOME_APP
    finally:
        relay.stop()
        pool.stop()
