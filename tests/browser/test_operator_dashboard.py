"""An operator recovers from a mail outage in a real browser (Chromium, real CSP, htmx).

The failure is real: the confirmation-mail handler runs in the worker's
``Deliverer`` (in this process, against the live app's PostgreSQL) with SMTP pointed
at a port where nothing listens, so it raises ConnectionRefusedError until the test
"fixes the cause" by starting an SMTP server (aiosmtpd) on that port.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from tests.integration.staff_fixtures import STAFF_PASSWORD, create_staff
from webapp.adapters.mail import make_mailer
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services import registrations
from webapp.services.delivery import Deliverer
from webapp.services.events import EventDetails, create_event

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
om = outbox_messages.c


class Inbox:
    """aiosmtpd handler: keeps what it received."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def _spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_port() -> int:
    return _spare_port()


@pytest.fixture
def worker(live_app: Flask, smtp_port: int, tmp_path: Any) -> Deliverer:
    """The worker's job code, mailing through SMTP on ``smtp_port``."""
    config = {
        **live_app.config,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_port,
        "SMTP_TIMEOUT": 2.0,
        "MAILBOX_DIR": str(tmp_path / "mailbox"),
    }
    deliverer = Deliverer(get_db(live_app), make_mailer(config), config, worker_name="drill/1")
    deliverer.retry_delay_seconds = 0.01  # the backoff schedule itself is tested elsewhere
    return deliverer


@pytest.fixture
def smtp_server(smtp_port: int) -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    yield controller, inbox
    if getattr(controller, "_thread", None) is not None:
        controller.stop()


def _pending_ids(app: Flask) -> list[Any]:
    with get_db(app).engine.connect() as conn:
        return list(
            conn.execute(
                select(om.Id).where(
                    om.ProcessedAt.is_(None), om.DeadLetteredAt.is_(None), om.ArchivedAt.is_(None)
                )
            ).scalars()
        )


def _run_worker_until_settled(app: Flask, worker: Deliverer) -> list[str]:
    """Deliver every pending message, retrying (short backoff) until it is processed or
    dead; returns the outcomes."""
    outcomes: list[str] = []
    deadline = time.monotonic() + 30
    while (ids := _pending_ids(app)) and time.monotonic() < deadline:
        for message_id in ids:
            outcomes.append(worker.process(message_id).status)
        time.sleep(0.05)
    assert not _pending_ids(app), outcomes
    return outcomes


def _sign_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name=re.compile("sign in", re.IGNORECASE)).click()
    expect(page.get_by_text(re.compile(r"Signed in as"))).to_be_visible()


def test_operator_finds_fixes_and_replays_a_dead_letter(
    browser: Browser,
    live_app: Flask,
    live_server: str,
    worker: Deliverer,
    smtp_server: tuple[Controller, Inbox],
) -> None:
    operator = create_staff(live_app, "operator", "olga@staff.example.test", "Olga")
    create_staff(live_app, "viewer", "victor@staff.example.test", "Victor")
    details = EventDetails(
        "Jazz Night", "Live jazz.", "Blue Room", datetime.now(UTC) + timedelta(days=3)
    )
    event_id = create_event(get_db(live_app).unit_of_work, details, 10)
    registrations.register(get_db(live_app).unit_of_work, event_id, "Ada", "ada@example.test")

    # the SMTP server is down: every attempt fails, the third one dead-letters it
    outcomes = _run_worker_until_settled(live_app, worker)
    assert outcomes.count("dead") == 1 and outcomes.count("retry") == 2, outcomes

    context = browser.new_context()
    overview = context.new_page()
    _sign_in(overview, live_server, operator.email)
    overview.goto(f"{live_server}/admin/operator/")
    expect(overview.locator("#dead-count")).to_have_text("1")
    overview.evaluate("window.__samePage = 'yes'")  # gone if the page ever reloads

    # find it by filter, open it, read the traceback
    page = context.new_page()
    page.goto(f"{live_server}/admin/operator/dead-letters")
    page.select_option("#f-error", "builtins.ConnectionRefusedError")
    page.get_by_label("Text in error message or payload").fill("connection refused")
    page.get_by_label("Event id").fill(str(event_id))
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#match-count")).to_have_text("1")
    page.locator("a.dead-letter-link").first.click()
    expect(page.locator("#message-state")).to_have_text("dead")
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#traceback")).to_contain_text("ConnectionRefusedError")
    expect(page.locator("#attempts tbody tr")).to_have_count(3)
    expect(page.locator("#payload")).to_contain_text('"event_id"')

    # fix the cause: the SMTP server comes back
    controller, inbox = smtp_server
    controller.start()

    # replay the filtered group, after the confirmation with the exact count
    page.go_back()
    page.locator("a.group-replay").first.click()
    expect(page.locator("#confirm-count")).to_have_text("1")
    page.locator("#confirm-action").click()
    expect(page.get_by_text("Replayed 1 message(s) matching the filter")).to_be_visible()

    # the overview, never reloaded, drops to 0 dead letters by itself (htmx polling)
    expect(overview.locator("#dead-count")).to_have_text("0", timeout=15_000)
    expect(overview.locator("#pending-count")).to_have_text("1", timeout=15_000)
    assert overview.evaluate("window.__samePage") == "yes"

    # the worker picks the replayed message up; the mail goes out once
    assert _run_worker_until_settled(live_app, worker) == ["processed"]
    assert [m.rcpt_tos for m in inbox.messages] == [["ada@example.test"]]
    expect(overview.locator("#pending-count")).to_have_text("0", timeout=15_000)
    assert overview.evaluate("window.__samePage") == "yes"

    # the audit log shows the replay
    page.goto(f"{live_server}/admin/operator/audit")
    row = page.locator("tr.audit-row", has_text="replay_filter")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(operator.email)
    expect(row.locator(".audit-count")).to_have_text("1")
    expect(row).to_contain_text("ConnectionRefusedError")
    context.close()


def test_viewer_has_no_replay_button_and_a_forged_post_is_refused(
    browser: Browser, live_app: Flask, live_server: str, worker: Deliverer
) -> None:
    viewer = create_staff(live_app, "viewer", "vera@staff.example.test", "Vera")
    details = EventDetails("Talk", "A talk.", "Hall", datetime.now(UTC) + timedelta(days=3))
    event_id = create_event(get_db(live_app).unit_of_work, details, 10)
    registrations.register(get_db(live_app).unit_of_work, event_id, "Bo", "bo@example.test")
    _run_worker_until_settled(live_app, worker)  # SMTP down: a dead letter

    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, live_server, viewer.email)
    page.goto(f"{live_server}/admin/operator/dead-letters")
    expect(page.locator("#match-count")).to_have_text("1")
    expect(page.get_by_role("button", name="Replay selected")).to_have_count(0)
    expect(page.locator("#replay-matching")).to_have_count(0)
    expect(page.locator("a.group-replay")).to_have_count(0)
    page.locator("a.dead-letter-link").first.click()
    expect(page.locator("#traceback")).to_be_visible()
    expect(page.locator("#replay-one")).to_have_count(0)
    message_id = page.url.rsplit("/", 1)[1]

    # a hand-made POST with the session cookie and a valid CSRF token: 403
    token = json.loads(page.locator("body").get_attribute("hx-headers") or "{}")["X-CSRFToken"]
    response = page.request.post(
        f"{live_server}/admin/operator/dead-letters/replay",
        form={"ids": message_id},
        headers={"X-CSRFToken": token},
        max_redirects=0,
    )
    assert response.status == 403
    page.goto(f"{live_server}/admin/operator/")
    expect(page.locator("#dead-count")).to_have_text("1")
    context.close()
