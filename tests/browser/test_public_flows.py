"""What an attendee sees in a real browser (Chromium, with the real CSP and htmx)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from webapp.extensions import get_db
from webapp.services import registrations
from webapp.services.events import EventDetails, create_event
from webapp.services.status_links import make_token

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SCREENSHOT_DIR = "/tmp"


def _event(app: Flask, title: str, capacity: int) -> int:
    details = EventDetails(
        title, "An evening of live music.", "Main Hall", datetime.now(UTC) + timedelta(days=5)
    )
    return create_event(get_db(app).unit_of_work, details, capacity)


def _registered(app: Flask, event_id: int, name: str, email: str) -> tuple[str, uuid.UUID]:
    outcome = registrations.register(get_db(app).unit_of_work, event_id, name, email)
    return outcome.status, outcome.registration_id


def _status_path(app: Flask, registration_id: uuid.UUID) -> str:
    return f"/registrations/{make_token(app.secret_key, registration_id)}"  # type: ignore[arg-type]


class Console:
    """Collects console messages and page errors (CSP violations show up here)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.lines.append(f"pageerror: {error}"))
        return page

    def _message(self, message: ConsoleMessage) -> None:
        self.lines.append(f"{message.type}: {message.text}")

    def assert_no_csp_errors(self) -> None:
        offending = [line for line in self.lines if "content security policy" in line.lower()]
        assert not offending, offending
        assert not [line for line in self.lines if line.startswith("pageerror")], self.lines


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def watched_page(page: Page, console: Console) -> Iterator[Page]:
    yield console.watch(page)
    console.assert_no_csp_errors()


def test_register_into_a_free_seat_with_the_keyboard(
    watched_page: Page, live_server: str, live_app: Flask
) -> None:
    page = watched_page
    _event(live_app, "Jazz in the Park", capacity=3)

    page.goto(live_server + "/")
    expect(page.get_by_role("heading", name="Upcoming events")).to_be_visible()
    page.get_by_role("link", name="Jazz in the Park").click()
    expect(page.get_by_role("heading", name="Jazz in the Park")).to_be_visible()
    page.screenshot(path=f"{SCREENSHOT_DIR}/public_event_page.png", full_page=True)

    page.get_by_label("Your name").focus()
    page.keyboard.type("Ada Lovelace")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Email address")).to_be_focused()
    page.keyboard.type("ada@example.com")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Register")).to_be_focused()
    page.keyboard.press("Enter")

    expect(page).to_have_url(re.compile(r"/registrations/[^/]+$"))
    expect(page.get_by_role("heading", name="Your registration")).to_be_visible()
    expect(page.locator("#registration-status-value")).to_have_text("Confirmed")
    expect(page.get_by_text("Ada Lovelace")).to_be_visible()
    page.screenshot(path=f"{SCREENSHOT_DIR}/public_status_page.png", full_page=True)


def test_register_into_a_full_event_shows_the_waitlist_position(
    watched_page: Page, live_server: str, live_app: Flask
) -> None:
    page = watched_page
    event_id = _event(live_app, "Sold Out Show", capacity=1)
    _registered(live_app, event_id, "First", "first@example.com")
    _registered(live_app, event_id, "Second", "second@example.com")

    page.goto(f"{live_server}/events/{event_id}")
    expect(page.get_by_text("This event is full")).to_be_visible()
    page.get_by_label("Your name").fill("Third Person")
    page.get_by_label("Email address").fill("third@example.com")
    page.get_by_role("button", name="Join the waitlist").click()

    expect(page.locator("#registration-status-value")).to_have_text("On the waitlist")
    expect(page.locator(".waitlist-position")).to_have_text("#2")
    expect(page.get_by_role("status").first).to_contain_text("waitlist")
    page.screenshot(path=f"{SCREENSHOT_DIR}/public_waitlisted_page.png", full_page=True)
    page.goto(live_server + "/")
    expect(page.locator(".card", has_text="Sold Out Show")).to_contain_text("2 people waiting")
    page.screenshot(path=f"{SCREENSHOT_DIR}/public_event_list.png", full_page=True)


def test_form_errors_are_announced_and_tied_to_their_fields(
    watched_page: Page, live_server: str, live_app: Flask
) -> None:
    page = watched_page
    event_id = _event(live_app, "Careful Typing", capacity=3)

    page.goto(f"{live_server}/events/{event_id}")
    page.get_by_label("Your name").fill("Ann")
    page.get_by_label("Email address").fill("not-an-email")
    page.get_by_role("button", name="Register").click()

    email = page.get_by_label("Email address")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_have_accessible_description(re.compile("valid email address"))
    expect(page.get_by_label("Your name")).to_have_value("Ann")
    expect(page.get_by_role("alert")).to_contain_text("Please correct the following")
    page.screenshot(path=f"{SCREENSHOT_DIR}/public_form_errors.png", full_page=True)


def test_cancelling_promotes_the_next_person_whose_page_updates_itself(
    browser: Browser, live_server: str, live_app: Flask
) -> None:
    event_id = _event(live_app, "Tiny Workshop", capacity=1)
    status_a, id_a = _registered(live_app, event_id, "Alice", "alice@example.com")
    status_b, id_b = _registered(live_app, event_id, "Bob", "bob@example.com")
    assert (status_a, status_b) == ("Confirmed", "Waitlisted")
    console = Console()
    context_a, context_b = browser.new_context(), browser.new_context()
    try:
        page_b = console.watch(context_b.new_page())
        polls: list[str] = []
        page_b.on(
            "request",
            lambda request: (
                polls.append(request.url) if request.headers.get("hx-request") == "true" else None
            ),
        )
        page_b.goto(live_server + _status_path(live_app, id_b))
        expect(page_b.locator("#registration-status-value")).to_have_text("On the waitlist")
        expect(page_b.locator(".waitlist-position")).to_have_text("#1")
        page_b.evaluate("window.__notReloaded = true")
        page_b.wait_for_timeout(1200)  # a few unchanged polls (204): nothing moves
        assert polls, "htmx never polled the status"
        assert all("seen=" in url for url in polls), polls  # unchanged polls answer 204
        expect(page_b.locator(".waitlist-position")).to_have_text("#1")

        page_a = console.watch(context_a.new_page())
        page_a.goto(live_server + _status_path(live_app, id_a))
        expect(page_a.locator("#registration-status-value")).to_have_text("Confirmed")
        page_a.get_by_role("link", name="Cancel my registration").click()
        expect(page_a.get_by_role("heading", name="Cancel your registration")).to_be_visible()
        page_a.screenshot(path=f"{SCREENSHOT_DIR}/public_cancel_page.png", full_page=True)
        page_a.get_by_role("button", name="Yes, cancel my registration").click()
        expect(page_a.get_by_role("status").first).to_contain_text("Your registration is cancelled")
        expect(page_a.locator("#registration-status-value")).to_have_text("Cancelled")

        # Bob's page, untouched, switches to Confirmed by itself
        expect(page_b.locator("#registration-status-value")).to_have_text(
            "Confirmed", timeout=10_000
        )
        expect(page_b.locator(".waitlist-position")).to_have_count(0)
        assert page_b.evaluate("window.__notReloaded") is True
        page_b.screenshot(path=f"{SCREENSHOT_DIR}/public_promoted_page.png", full_page=True)
        console.assert_no_csp_errors()
    finally:
        context_a.close()
        context_b.close()
