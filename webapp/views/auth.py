"""Staff sign-in (blueprint ``auth``) and the access decorators every staff page uses.

Decorators to import in other blueprints (admin, operator dashboard)::

    from webapp.views.auth import operator_required, recent_login_required, staff_required

    @bp.get("/admin/operator/")
    @staff_required                 # any signed-in staff account (viewer or operator)
    def overview(): ...

    @bp.post("/admin/operator/dead-letters/replay")
    @operator_required              # operators only; a viewer gets the 403 page
    @recent_login_required          # signed in within RECENT_LOGIN_MINUTES, else re-login
    def replay(): ...

Order matters: the role decorator goes *above* ``recent_login_required``.
Anonymous requests are redirected (302) to ``/login?next=<this page>``; HTMX requests
get 401 with an ``HX-Redirect`` header instead, so htmx navigates rather than
swapping a login form into a fragment. ``current_staff()`` returns the signed-in
``StaffUser`` (``.email`` is what audit rows should record as the actor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_user, logout_user

from webapp.extensions import limiter, login_manager
from webapp.services import staff
from webapp.services.staff import OPERATOR, ROLES, StaffUser
from webapp.views.admin_forms import LoginForm, ReauthForm
from webapp.views.errors import render_error

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

F = TypeVar("F", bound=Callable[..., Any])
ViewResult = Any

#: the one message for an unknown email, a wrong password and a disabled account
LOGIN_FAILED = "Wrong email or password."
SESSION_LOGIN_AT = "login_at"

login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to see this page."
login_manager.login_message_category = "info"


@login_manager.user_loader
def load_user(user_id: str) -> StaffUser | None:
    """The session's staff account, re-read on every request: a disabled account or a
    changed role takes effect at once."""
    user = staff.get_user(user_id)
    if user is None or not user.active:
        return None
    return user


# -- helpers ---------------------------------------------------------------------------------
def current_staff() -> StaffUser | None:
    """The signed-in staff account, or None for anonymous requests."""
    if not current_user.is_authenticated:
        return None
    return cast(StaffUser, current_user._get_current_object())


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a path on this site (no open redirect), else None."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _return_target() -> str | None:
    """Where to come back after (re-)login: this page for a GET, else the page the form
    was on (a POST URL cannot be revisited with GET)."""
    if request.method == "GET" and request.headers.get("HX-Request") != "true":
        return safe_next(request.full_path.rstrip("?"))
    referrer = request.referrer
    if referrer:
        parts = urlsplit(referrer)
        if parts.netloc == request.host:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            return safe_next(path)
    return None


def _send_to(endpoint: str) -> ViewResult:
    target = _return_target()
    location = url_for(endpoint, next=target) if target else url_for(endpoint)
    if request.headers.get("HX-Request") == "true":
        response = Response("Please sign in again.", status=401)
        response.headers["HX-Redirect"] = location
        return response
    return redirect(location)


def login_is_recent() -> bool:
    """Whether this session signed in (or confirmed its password) within
    ``RECENT_LOGIN_MINUTES``."""
    login_at = session.get(SESSION_LOGIN_AT)
    if not isinstance(login_at, int | float):
        return False
    now = time.time()
    window = 60 * float(current_app.config["RECENT_LOGIN_MINUTES"])
    return login_at <= now + 60 and now - login_at <= window


def forbidden() -> ViewResult:
    user = current_staff()
    role = user.role if user else "unknown"
    return render_error(
        403,
        "Not allowed",
        f"Your account has the {role} role: it can look at the admin pages, "
        "but only an operator can make changes.",
    )


# -- decorators ------------------------------------------------------------------------------
def role_required(*roles: str) -> Callable[[F], F]:
    """Allow signed-in staff with one of ``roles`` (all roles when none are given).

    Anonymous: 302 to ``/login?next=...`` (HTMX: 401 + ``HX-Redirect``).
    Signed in with another role: the 403 error page.
    """
    allowed = roles or ROLES
    unknown = set(allowed) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> ViewResult:
            user = current_staff()
            if user is None:
                return _send_to("auth.login")
            if user.role not in allowed:
                log.info(
                    "staff access refused",
                    extra={"staff_email": user.email, "endpoint": request.endpoint},
                )
                return forbidden()
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorator


#: any signed-in staff account (viewers and operators): pages that only show things
staff_required = role_required()
#: operators only: every page or POST that changes something
operator_required = role_required(OPERATOR)


def recent_login_required(view: F) -> F:
    """For destructive actions: the session must have signed in (or re-confirmed the
    password) within ``RECENT_LOGIN_MINUTES``; otherwise redirect to the password
    confirmation page, which comes back to the page the action was started from.
    Put it *below* ``operator_required``/``role_required``."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ViewResult:
        if current_staff() is None:
            return _send_to("auth.login")
        if not login_is_recent():
            flash("Please confirm your password to continue.", "info")
            return _send_to("auth.reauthenticate")
        return view(*args, **kwargs)

    return cast(F, wrapped)


# -- views -----------------------------------------------------------------------------------
def _login_limit() -> str:
    return str(current_app.config["RATELIMIT_LOGIN"])


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login() -> ViewResult:
    """Sign in. Failures answer 401 with one generic message (no account probing)."""
    next_url = safe_next(request.args.get("next"))
    if request.method == "GET" and current_staff() is not None:
        return redirect(next_url or url_for("admin.index"))
    form = LoginForm()
    status = 200
    if request.method == "POST":
        status = 422
        if form.validate():
            user = staff.authenticate(form.email.data or "", form.password.data or "")
            if user is None:
                form.form_errors.append(LOGIN_FAILED)
                status = 401
            else:
                session.clear()  # a fresh session: nothing survives from before sign-in
                login_user(user)
                session[SESSION_LOGIN_AT] = time.time()
                log.info("staff signed in", extra={"staff_email": user.email})
                flash(f"Signed in as {user.name} ({user.role}).", "success")
                return redirect(next_url or url_for("admin.index"))
        form.password.data = ""
    return render_template("auth/login.html", form=form, next_url=next_url), status


@bp.route("/login/confirm", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
@staff_required
def reauthenticate() -> ViewResult:
    """Confirm the password of the signed-in account (before destructive actions)."""
    user = current_staff()
    assert user is not None
    next_url = safe_next(request.args.get("next"))
    form = ReauthForm()
    status = 200
    if request.method == "POST":
        status = 422
        if form.validate():
            if staff.check_password(user.id, form.password.data or ""):
                session[SESSION_LOGIN_AT] = time.time()
                log.info("staff password confirmed", extra={"staff_email": user.email})
                flash("Password confirmed.", "success")
                return redirect(next_url or url_for("admin.index"))
            form.password.errors = [*form.password.errors, "Wrong password."]
            status = 401
    return render_template("auth/reauth.html", form=form, next_url=next_url), status


@bp.post("/logout")
def logout() -> ViewResult:
    user = current_staff()
    logout_user()
    session.clear()
    if user is not None:
        log.info("staff signed out", extra={"staff_email": user.email})
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
