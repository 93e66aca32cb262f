"""`make run`'s launcher on the embedded defaults: SQLite file + embedded Redis,
web + relay + worker, demo data, a printed admin login, mail in the mailbox folder."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import csrf_token_from

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_launcher_serves_seeded_events_and_delivers_mail(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CACHE_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'les.sqlite3'}",
        MAILBOX_DIR=str(tmp_path / "mailbox"),
        BIND=f"127.0.0.1:{port}",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        WORKERS="1",
        LOG_LEVEL="WARNING",
    )
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "webapp.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Stop with Ctrl-C" not in log.read_text():
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        banner = log.read_text()
        assert f"http://127.0.0.1:{port}/" in banner
        assert re.search(r"admin@example\.com / \S{16,}", banner), "admin login printed once"
        assert "Sold-out Workshop" in banner  # demo data seeded

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10, follow_redirects=False) as client:
            home = client.get("/")
            assert home.status_code == 200
            assert "Sold-out Workshop" in home.text
            page = client.get("/events/4")
            token = re.search(r'name="idempotency_token"[^>]*value="([^"]+)"', page.text)
            response = client.post(
                "/events/4/register",
                data={
                    "csrf_token": csrf_token_from(page.text),
                    "name": "Launch Tester",
                    "email": "launch.tester@example.com",
                    "idempotency_token": token.group(1) if token else "",
                },
            )
            assert response.status_code == 303, response.text[:500]
            status = client.get(response.headers["location"])
            assert "Confirmed" in status.text

        mailbox = tmp_path / "mailbox"
        deadline = time.monotonic() + 30
        while not any(
            "launch.tester@example.com" in p.read_text(errors="replace")
            for p in mailbox.glob("*.eml")
        ):
            assert time.monotonic() < deadline, "the confirmation mail never arrived"
            time.sleep(0.3)
    finally:
        os.killpg(launcher.pid, signal.SIGINT)
        try:
            launcher.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
    assert launcher.returncode == 0, log.read_text()[-2000:]
