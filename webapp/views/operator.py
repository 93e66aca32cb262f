"""Operator dashboard under /admin/operator: outbox overview, retries, dead letters
(filters, fingerprint groups, detail, replay/archive), audit log, cache, query timings.

Viewers see every page; only operators act. Every action is a POST (CSRF checked
app-wide; htmx sends the token in ``X-CSRFToken``) and checks the role on the
server; replay and archive also need a recent login. Parts of the pages refresh
with htmx (``hx-trigger="every 5s"``); without JavaScript they are plain pages and
forms (POST, then redirect).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from webapp.adapters.dashboard_queries import DeadLetterFilter, FilterError
from webapp.extensions import uow
from webapp.services import dashboard, replay
from webapp.views.auth import (
    current_staff,
    operator_required,
    recent_login_required,
    staff_required,
)
from webapp.views.errors import render_error

bp = Blueprint("operator", __name__, url_prefix="/admin/operator")

ViewResult = Any
ACTIONS = ("replay", "archive")


def _htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def _actor() -> str:
    user = current_staff()
    assert user is not None
    return user.email


def _page_arg() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and len(raw) < 7 else 1


def _filter_or_error(values: Any) -> tuple[DeadLetterFilter | None, ViewResult | None]:
    try:
        return DeadLetterFilter.from_args(values), None
    except FilterError as error:
        return None, render_error(400, "That filter does not work", str(error))


# -- overview ------------------------------------------------------------------------------
@bp.get("/")
@staff_required
def index() -> ViewResult:
    data = dashboard.overview()
    return _page("overview", o=data, threshold=_pending_threshold())


def _page(name: str, **context: Any) -> str:
    """The whole page, or only its refreshable part for an htmx poll
    (``operator/<name>.html`` includes ``operator/_<name>.html``)."""
    prefix = "_" if _htmx() else ""
    return render_template(f"operator/{prefix}{name}.html", **context)


def _pending_threshold() -> int:
    return int(current_app.config["OUTBOX_OLDEST_PENDING_THRESHOLD_SECONDS"])


# -- retries -------------------------------------------------------------------------------
@bp.get("/retries")
@staff_required
def retries() -> ViewResult:
    rows = dashboard.retrying()
    return _page("retries", rows=rows)


@bp.post("/retries/retry-now")
@operator_required
def retry_now() -> ViewResult:
    try:
        result = replay.retry_now(uow, request.form.getlist("ids"), actor=_actor())
    except replay.ActionRefused as error:
        return render_error(400, "Nothing retried", str(error))
    flash(f"{result.count} message(s) will be retried now.", "success")
    return redirect(url_for("operator.retries"))


# -- dead letters --------------------------------------------------------------------------
@bp.get("/dead-letters")
@staff_required
def dead_letters() -> ViewResult:
    flt, error = _filter_or_error(request.args)
    if error is not None:
        return error
    assert flt is not None
    if _htmx() and request.args.get("part") == "summary":
        total, groups = dashboard.dead_letter_summary(flt)
        return render_template("operator/_dead_summary.html", flt=flt, total=total, groups=groups)
    data = dashboard.dead_letters(flt, _page_arg())
    return render_template("operator/dead_letters.html", d=data, flt=flt)


@bp.get("/dead-letters/<uuid:message_id>")
@staff_required
def dead_letter(message_id: uuid.UUID) -> ViewResult:
    detail = dashboard.message(message_id)
    if detail is None:
        abort(404, "There is no outbox message with this id.")
    return render_template("operator/dead_letter.html", m=detail)


@bp.post("/dead-letters/replay")
@operator_required
@recent_login_required
def replay_selected() -> ViewResult:
    try:
        result = replay.replay_messages(uow, request.form.getlist("ids"), actor=_actor())
    except replay.ActionRefused as error:
        return render_error(400, "Nothing replayed", str(error))
    flash(f"Replayed {result.count} message(s): {result.outcome}.", "success")
    return redirect(_back_to_list())


@bp.post("/dead-letters/archive")
@operator_required
@recent_login_required
def archive_selected() -> ViewResult:
    try:
        result = replay.archive_messages(
            uow, request.form.getlist("ids"), actor=_actor(), reason=request.form.get("reason", "")
        )
    except replay.ActionRefused as error:
        return render_error(400, "Nothing archived", str(error))
    flash(f"Archived {result.count} message(s): {result.outcome}.", "success")
    return redirect(_back_to_list())


def _back_to_list() -> str:
    flt, error = _filter_or_error(request.form)
    args = flt.to_args() if flt is not None and error is None else {}
    return url_for("operator.dead_letters", **args)


@bp.get("/dead-letters/confirm/<action>")
@operator_required
def confirm_matching(action: str) -> ViewResult:
    """Step one of "everything matching this filter": show the exact count."""
    if action not in ACTIONS:
        abort(404)
    flt, error = _filter_or_error(request.args)
    if error is not None:
        return error
    assert flt is not None
    count = dashboard.exact_count(flt)
    return render_template("operator/confirm.html", action=action, flt=flt, count=count)


@bp.post("/dead-letters/matching/<action>")
@operator_required
@recent_login_required
def act_on_matching(action: str) -> ViewResult:
    """Step two: act on every match, in batches. If the count changed since the operator
    confirmed it, ask again with the new count instead of acting."""
    if action not in ACTIONS:
        abort(404)
    flt, error = _filter_or_error(request.form)
    if error is not None:
        return error
    assert flt is not None
    confirmed = request.form.get("confirmed_count", "")
    if not confirmed.isdigit():
        return render_error(400, "Not confirmed", "Confirm the number of messages first.")
    reason = request.form.get("reason", "")
    count = dashboard.exact_count(flt)
    if count != int(confirmed):
        flash(
            f"The number of matching messages changed from {confirmed} to {count}. "
            "Please confirm again.",
            "error",
        )
        page = render_template(
            "operator/confirm.html", action=action, flt=flt, count=count, reason=reason
        )
        return page, 409
    try:
        if action == "replay":
            result = replay.replay_matching(uow, flt, actor=_actor())
        else:
            result = replay.archive_matching(uow, flt, actor=_actor(), reason=reason)
    except replay.ActionRefused as refused:
        return render_error(400, "Nothing archived", str(refused))
    verb = "Replayed" if action == "replay" else "Archived"
    flash(f"{verb} {result.count} message(s) matching the filter: {result.outcome}.", "success")
    return redirect(url_for("operator.dead_letters", **flt.to_args()))


# -- audit log, cache, query timings -------------------------------------------------------
@bp.get("/audit")
@staff_required
def audit() -> ViewResult:
    entries, page, pages = dashboard.audit_log(_page_arg())
    return _page("audit", entries=entries, page=page, pages=pages)


@bp.get("/cache")
@staff_required
def cache() -> ViewResult:
    regions = dashboard.cache_regions()
    return _page("cache", regions=regions)


@bp.get("/queries")
@staff_required
def queries() -> ViewResult:
    window_raw = request.args.get("window", "5")
    window = int(window_raw) if window_raw.isdigit() and len(window_raw) < 4 else 5
    data = dashboard.query_timings(window, request.args.get("sort", "total"))
    return _page("queries", t=data, windows=dashboard.WINDOWS)
