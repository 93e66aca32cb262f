"""Public attendee pages: the event list, an event with its registration form, and
the signed status link where an attendee follows and cancels their registration.

Every page works without JavaScript; htmx only refreshes the status block.
Views never commit: each POST calls one use case, which opens its own unit of work.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    get_template_attribute,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from webapp.adapters.cache_pages import cached_page, do_not_store, personal_value
from webapp.adapters.lru import LruMap
from webapp.domain import errors
from webapp.domain.model import normalize_email
from webapp.extensions import limiter, uow
from webapp.observability.metrics import CANCELLATIONS, REGISTRATIONS
from webapp.services import read_model, registrations
from webapp.services.status_links import (
    ExpiredStatusToken,
    InvalidStatusToken,
    make_token,
    read_token,
)
from webapp.views.errors import render_error
from webapp.views.forms import CancelForm, RegistrationForm, new_idempotency_token

bp = Blueprint("public", __name__)

ResponseLike = Response | tuple[str, int] | str


def _registration_limit() -> str:
    return str(current_app.config["RATELIMIT_REGISTRATION"])


rate_limited = limiter.limit(_registration_limit, methods=["POST"])


# -- helpers -------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


def _copy_lifetime() -> timedelta:
    """How long a cached page may be served: the page TTL in Redis, then as a
    process's near-cache copy."""
    config = current_app.config
    return timedelta(
        seconds=int(config["CACHE_TTL_PAGE_OUTPUT"]) + float(config["CACHE_NEAR_TTL_SECONDS"])
    )


def _registration_state(event: dict[str, Any]) -> str | None:
    """Why the event takes no registrations, or None when it does."""
    if event["start_date"] <= _now():
        return "This event has already started, so registration is no longer possible."
    if not event["registration_open"]:
        return "Registration for this event is closed."
    return None


def _load_event(event_id: int) -> dict[str, Any]:
    event = read_model.event_detail(event_id)
    if event is None:
        abort(404, description="There is no such event. It may have been removed.")
    return event


def _status_token(registration_id: uuid.UUID | str) -> str:
    return make_token(current_app.secret_key, registration_id)  # type: ignore[arg-type]


def _registration_from_token(token: str) -> tuple[uuid.UUID, dict[str, Any]]:
    """The registration a status link points to, or the right error page."""
    try:
        registration_id = read_token(
            current_app.secret_key,  # type: ignore[arg-type]
            token,
            int(current_app.config["STATUS_TOKEN_MAX_AGE_DAYS"]),
        )
    except ExpiredStatusToken:
        abort(
            410,
            description="This status link has expired. Your registration is unchanged; "
            "please contact the organiser if you need to change it.",
        )
    except InvalidStatusToken:
        abort(404, description="This link is not valid. Please check that you copied all of it.")
    status = read_model.registration_status(registration_id)
    if status is None:
        abort(404, description="This registration no longer exists.")
    return registration_id, status


def _status_fingerprint(status: dict[str, Any]) -> str:
    return f"{status['status']}-{status['position'] or 0}"


def _poll_trigger() -> str:
    seconds = float(current_app.config.get("STATUS_POLL_SECONDS", 5))
    if seconds.is_integer():
        return f"every {int(seconds)}s"
    return f"every {max(int(seconds * 1000), 100)}ms"


def _private(response: Response) -> Response:
    """Status pages are personal: never stored by a shared cache or indexed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    response.vary.add("HX-Request")
    return response


def _event_page(
    event: dict[str, Any], form: RegistrationForm | None, status: int = 200, **extra: Any
) -> tuple[str, int]:
    closed_reason = _registration_state(event)
    if form is not None and not form.idempotency_token.data:
        form.idempotency_token.data = new_idempotency_token()
    html = render_template(
        "public/event.html",
        event=event,
        form=None if closed_reason else form,
        closed_reason=closed_reason,
        **extra,
    )
    return html, status


# -- pages ---------------------------------------------------------------------------------
@bp.get("/")
@cached_page  # same for every anonymous visitor; see webapp/adapters/cache_pages.py
def event_list() -> str:
    events = read_model.upcoming_events()
    now = _now()
    for event in events:
        event["closed"] = not event["registration_open"] or event["start_date"] <= now
    if any(event["start_date"] <= now + _copy_lifetime() for event in events):
        do_not_store()  # a copy would still show an event as open after its start
    return render_template("public/events.html", events=events)


def _live_counts() -> dict[str, Any]:
    """This request's event's current counts (once per request), for its live parts."""
    if "_live_counts" not in g:
        event_id = (request.view_args or {}).get("event_id")
        counts = read_model.event_seats(event_id) if isinstance(event_id, int) else None
        if counts is None:
            raise LookupError(event_id)  # the page is rendered afresh (a 404 if gone)
        g._live_counts = counts
    return g._live_counts  # type: ignore[no-any-return]


#: rendered live parts by (part, counts): an event's page is read many times between
#: two changes of its counts, and the part depends on nothing else
_RENDERED_PARTS: LruMap[tuple[str, tuple[tuple[str, Any], ...]], str] = LruMap(2048)


def _live_event_part(name: str) -> Callable[[], str]:
    def render() -> str:
        counts = _live_counts()
        key = (name, tuple(sorted(counts.items())))
        rendered = None if current_app.jinja_env.auto_reload else _RENDERED_PARTS.get(key)
        if rendered is None:
            rendered = str(get_template_attribute("public/_event_counts.html", name)(counts))
            _RENDERED_PARTS.put(key, rendered)
        return rendered

    return render


#: the parts of an event page that follow its counts (templates/public/_event_counts.html)
LIVE_EVENT_PARTS = {name: _live_event_part(name) for name in ("seats", "availability", "submit")}


@bp.get("/events/<int:event_id>")
@cached_page(personal={"idempotency_token": new_idempotency_token, **LIVE_EVENT_PARTS})
def event_detail(event_id: int) -> tuple[str, int]:
    event = _load_event(event_id)
    form = RegistrationForm(formdata=None)
    form.idempotency_token.data = personal_value("idempotency_token", new_idempotency_token())
    if event["start_date"] <= _now() + _copy_lifetime():
        do_not_store()  # a copy would still offer the form after the start
    return _event_page(event, form)


@bp.post("/events/<int:event_id>/register")
@rate_limited
def register(event_id: int) -> ResponseLike:
    # the details decide whether to try; the counts (which every registration changes)
    # are read only to show the form again: the use case locks the event anyway
    event = read_model.event_details(event_id)
    if event is None:
        abort(404, description="There is no such event. It may have been removed.")
    form = RegistrationForm()
    if _registration_state(event):
        REGISTRATIONS.labels(outcome="rejected").inc()
        return _event_page(_load_event(event_id), None, 409)
    if not form.validate():
        REGISTRATIONS.labels(outcome="rejected").inc()
        return _event_page(_load_event(event_id), form, 422)
    email = form.email.data or ""
    try:
        outcome = registrations.register(
            uow,
            event_id,
            form.name.data or "",
            email,
            form.idempotency_token.data or None,
        )
    except errors.InvalidInput as error:
        REGISTRATIONS.labels(outcome="rejected").inc()
        field = getattr(form, error.field or "", None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*field.errors, str(error)]
            return _event_page(_load_event(event_id), form, 422)
        return _event_page(_load_event(event_id), form, 422, form_error=str(error))
    except errors.AlreadyRegistered as error:
        REGISTRATIONS.labels(outcome="duplicate").inc()
        existing = read_model.registration_status(error.registration_id)
        html = render_template("public/already_registered.html", event=event, existing=existing)
        return html, 409
    except errors.EventNotFound:
        REGISTRATIONS.labels(outcome="rejected").inc()
        abort(404, description="There is no such event. It may have been removed.")
    except (errors.RegistrationClosed, errors.EventAlreadyStarted) as error:
        # the event changed between our read and the locked decision
        REGISTRATIONS.labels(outcome="rejected").inc()
        event = {**_load_event(event_id), "registration_open": False}
        return _event_page(event, None, 409, closed_message=str(error))

    if outcome.repeated:
        # Same form submitted again: show the same result, but only to the person who
        # sent it (a replayed token with another email must not reveal a status link).
        earlier = read_model.registration_status(outcome.registration_id)
        if (
            earlier is None
            or earlier["event_id"] != event_id
            or earlier["email"] != normalize_email(email)
        ):
            REGISTRATIONS.labels(outcome="rejected").inc()
            form.idempotency_token.data = new_idempotency_token()
            return _event_page(
                _load_event(event_id),
                form,
                422,
                form_error="This form was already used. Please check your details and "
                "submit again.",
            )
        REGISTRATIONS.labels(outcome="duplicate").inc()
    else:
        REGISTRATIONS.labels(outcome=outcome.status.lower()).inc()
    if outcome.repeated:
        flash("We already had this form: here is the registration it created.", "info")
    elif outcome.status == "Confirmed":
        flash("You are registered: your seat is confirmed.", "success")
    else:
        flash("The event is full, so you are on the waitlist.", "info")
    token = _status_token(outcome.registration_id)
    return redirect(url_for("public.registration_status", token=token), code=303)


@bp.get("/registrations/<token>")
def registration_status(token: str) -> Response:
    _registration_id, status = _registration_from_token(token)
    started = status["start_date"] <= _now()
    context = {
        "status": status,
        "token": token,
        "started": started,
        "fingerprint": _status_fingerprint(status),
        "poll_trigger": _poll_trigger(),
        "polling": status["status"] != "Cancelled" and not started,
    }
    if request.headers.get("HX-Request") == "true":
        if request.args.get("seen") == context["fingerprint"] and context["polling"]:
            response = make_response("", 204)  # unchanged: htmx leaves the page alone
        else:
            response = make_response(render_template("public/_status.html", **context))
            if not context["polling"]:
                response.status_code = 286  # htmx: stop polling, nothing can change now
        return _private(response)
    return _private(make_response(render_template("public/status.html", **context)))


@bp.route("/registrations/<token>/cancel", methods=["GET", "POST"])
@rate_limited
def cancel_registration(token: str) -> ResponseLike:
    registration_id, status = _registration_from_token(token)
    if request.method == "GET":
        # Only a confirmation page: following the link (a mail scanner) changes nothing.
        refused = None
        if status["status"] == "Cancelled":
            refused = "This registration is already cancelled."
        elif status["start_date"] <= _now():
            refused = "This event has already started, so the registration can't change."
        response = make_response(
            render_template(
                "public/cancel.html",
                status=status,
                token=token,
                form=None if refused else CancelForm(),
                refused=refused,
            )
        )
        return _private(response)
    try:
        registrations.cancel(uow, registration_id)
    except errors.AlreadyCancelled:
        return _cancel_refused(status, token, "This registration was already cancelled.")
    except errors.EventAlreadyStarted:
        return _cancel_refused(
            status, token, "This event has already started, so the registration can't change."
        )
    except errors.RegistrationNotFound:
        abort(404, description="This registration no longer exists.")
    CANCELLATIONS.inc()
    flash("Your registration is cancelled. Thank you for freeing the seat.", "success")
    return redirect(url_for("public.registration_status", token=token), code=303)


def _cancel_refused(status: dict[str, Any], token: str, message: str) -> Response:
    response = make_response(
        render_template(
            "public/cancel.html", status=status, token=token, form=None, refused=message
        ),
        409,
    )
    return _private(response)


@bp.errorhandler(410)
def gone(error: HTTPException) -> tuple[str, int]:
    return render_error(410, "This link has expired", error.description or "")


@bp.app_template_filter("event_time")
def event_time(value: datetime) -> str:
    """``Sat 14 Mar 2026, 18:00 UTC``: unambiguous without knowing the reader's zone."""
    return value.astimezone(UTC).strftime("%a %d %b %Y, %H:%M UTC")
