"""Organiser pages under /admin: events, capacity changes with a preview, attendee lists.

Viewers see everything here; only operators create, edit or change capacity (the
role is checked on the server for every request). Dates are entered and shown in UTC.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf import FlaskForm

from webapp.domain import errors
from webapp.extensions import uow
from webapp.services import events as event_service
from webapp.services import read_model
from webapp.services.events import CapacityPreview, EventDetails
from webapp.services.unit_of_work import utcnow
from webapp.views.admin_forms import CapacityForm, CreateEventForm, EventForm, capacity_value
from webapp.views.auth import (
    current_staff,
    operator_required,
    recent_login_required,
    staff_required,
)

bp = Blueprint("admin", __name__, url_prefix="/admin")

ViewResult = Any
UNPROCESSABLE = 422
#: CSV cells starting with these are formulas in spreadsheet programs
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# -- template helpers ------------------------------------------------------------------------
@bp.app_template_filter("admin_utc")
def format_utc(value: datetime | None) -> str:
    """``2030-05-17 18:30 UTC`` (every admin date is shown in UTC)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_global("has_endpoint")
def has_endpoint(name: str) -> bool:
    """For the nav: link to pages of blueprints that may not be installed."""
    return name in current_app.view_functions


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def describe_preview(preview: CapacityPreview) -> str:
    """What a capacity change would do, in one sentence for the organiser."""
    delta = preview.new - preview.current
    if delta == 0:
        return f"No change: the capacity stays at {preview.current}."
    if delta > 0:
        if preview.promotes == 0:
            return f"+{delta} adds {_plural(delta, 'free seat', 'free seats')}; nobody is waiting."
        text = f"+{delta} promotes {_plural(preview.promotes, 'waiting person', 'waiting people')}"
        staying = preview.waiting - preview.promotes
        free = preview.new - preview.confirmed - preview.promotes
        if staying:
            text += f"; {staying} will still be waiting"
        if free:
            text += f"; {_plural(free, 'seat stays', 'seats stay')} free"
        return text + "."
    free = preview.new - preview.confirmed
    return (
        f"{delta} removes {_plural(-delta, 'free seat', 'free seats')}; "
        f"{_plural(free, 'seat stays', 'seats stay')} free and nobody loses their seat."
    )


def describe_change(new_capacity: int, promoted: int) -> str:
    """The flash message after a capacity change."""
    if promoted == 0:
        return f"Capacity {new_capacity}: nobody promoted."
    return f"Capacity {new_capacity}: {_plural(promoted, 'person', 'people')} promoted."


def _event_or_404(event_id: int) -> dict[str, Any]:
    event = read_model.event_detail(event_id)
    if event is None:
        abort(404, description="This event does not exist.")
    return event


def _show_error(form: FlaskForm, error: errors.DomainError) -> None:
    """Tie a domain error to its form field when there is one, else to the form."""
    field_name = getattr(error, "field", None)
    if field_name == "start_date":
        field_name = "start"
    field = form._fields.get(field_name) if field_name else None
    if field is not None:
        field.errors = [*field.errors, str(error)]
    else:
        form.form_errors.append(str(error))


def _details(form: EventForm) -> EventDetails:
    return EventDetails(
        title=form.title.data or "",
        description=form.description.data or "",
        venue=form.venue.data or "",
        start_date=form.start_utc(),
        registration_open=bool(form.registration_open.data),
    )


# -- pages -----------------------------------------------------------------------------------
def _actor() -> str:
    """The signed-in staff member's email, for the audit log."""
    user = current_staff()
    return user.email if user else "unknown"


@bp.get("/")
@staff_required
def index() -> ViewResult:
    """Every event with its capacity, seats taken and waitlist length."""
    return render_template("admin/index.html", events=read_model.all_events(), now=utcnow())


@bp.route("/events/new", methods=["GET", "POST"])
@operator_required
def create_event() -> ViewResult:
    form = CreateEventForm()
    if request.method == "GET":
        return render_template("admin/event_form.html", form=form, event=None)
    if form.validate():
        start = form.start_utc()
        if start <= utcnow():
            form.start.errors = [*form.start.errors, "The start must be in the future."]
        else:
            try:
                event_id = event_service.create_event(
                    uow, _details(form), capacity_value(form.capacity), actor=_actor()
                )
            except errors.DomainError as error:
                _show_error(form, error)
            else:
                flash(f"Event “{form.title.data}” created.", "success")
                return redirect(url_for("admin.event", event_id=event_id))
    return render_template("admin/event_form.html", form=form, event=None), UNPROCESSABLE


@bp.get("/events/<int:event_id>")
@staff_required
def event(event_id: int) -> ViewResult:
    """The event with its confirmed people, the waitlist in order and cancellations."""
    detail = _event_or_404(event_id)
    attendees = read_model.event_attendees(event_id)
    groups: dict[str, list[dict[str, Any]]] = {"Confirmed": [], "Waitlisted": [], "Cancelled": []}
    for row in attendees:
        groups.setdefault(row["status"], []).append(row)
    return render_template("admin/event.html", event=detail, groups=groups)


@bp.route("/events/<int:event_id>/edit", methods=["GET", "POST"])
@operator_required
def edit_event(event_id: int) -> ViewResult:
    detail = _event_or_404(event_id)
    if request.method == "GET":
        form = EventForm(
            data={
                "title": detail["title"],
                "description": detail["description"],
                "venue": detail["venue"],
                "start": detail["start_date"].astimezone(UTC).replace(tzinfo=None),
                "registration_open": detail["registration_open"],
            }
        )
        return render_template("admin/event_form.html", form=form, event=detail)
    form = EventForm()
    if form.validate():
        start = form.start_utc()
        if start != detail["start_date"] and start <= utcnow():
            form.start.errors = [*form.start.errors, "The new start must be in the future."]
        else:
            try:
                event_service.update_event(uow, event_id, _details(form), actor=_actor())
            except errors.EventNotFound:
                abort(404, description="This event does not exist.")
            except errors.DomainError as error:
                _show_error(form, error)
            else:
                flash("Event saved.", "success")
                return redirect(url_for("admin.event", event_id=event_id))
    return render_template("admin/event_form.html", form=form, event=detail), UNPROCESSABLE


def _preview(event_id: int, form: CapacityForm) -> dict[str, Any] | None:
    """Validate the capacity field and describe its effect (None when the field is bad)."""
    if not form.capacity.validate(form):
        return None
    try:
        preview = event_service.preview_capacity(uow, event_id, capacity_value(form.capacity))
    except errors.EventNotFound:
        abort(404, description="This event does not exist.")
    except errors.DomainError as error:
        return {"ok": False, "text": str(error)}
    return {"ok": True, "text": describe_preview(preview), "preview": preview}


def _capacity_page(
    detail: dict[str, Any], form: CapacityForm, preview: dict[str, Any] | None, status: int
) -> ViewResult:
    return (
        render_template("admin/capacity.html", event=detail, form=form, preview=preview),
        status,
    )


@bp.route("/events/<int:event_id>/capacity", methods=["GET", "POST"])
@operator_required
def capacity(event_id: int) -> ViewResult:
    """Change the capacity. With JS the preview updates as you type (``capacity_preview``);
    without, the Preview button POSTs here and the page comes back with the preview."""
    detail = _event_or_404(event_id)
    if request.method == "GET":
        form = CapacityForm(data={"capacity": str(detail["capacity"])})
        return _capacity_page(detail, form, None, 200)
    form = CapacityForm()
    preview = _preview(event_id, form)
    ok = preview is not None and preview["ok"]
    return _capacity_page(detail, form, preview, 200 if ok else UNPROCESSABLE)


@bp.get("/events/<int:event_id>/capacity/preview")
@operator_required
def capacity_preview(event_id: int) -> ViewResult:
    """HTMX partial: the effect of ``?capacity=N`` (read only, so a GET). It answers 200
    even for a refused value: the refusal *is* the preview, and htmx swaps only 2xx."""
    _event_or_404(event_id)
    form = CapacityForm(formdata=request.args, meta={"csrf": False})
    preview = _preview(event_id, form)
    if preview is None:
        preview = {"ok": False, "text": " ".join(form.capacity.errors)}
    return render_template("admin/_capacity_preview.html", preview=preview)


@bp.post("/events/<int:event_id>/capacity/apply")
@operator_required
@recent_login_required
def apply_capacity(event_id: int) -> ViewResult:
    """Set the capacity; an increase promotes waiting people in queue order."""
    detail = _event_or_404(event_id)
    form = CapacityForm()
    if not form.validate():
        return _capacity_page(detail, form, None, UNPROCESSABLE)
    new_capacity = capacity_value(form.capacity)
    try:
        promoted = event_service.change_capacity(uow, event_id, new_capacity, actor=_actor())
    except errors.EventNotFound:
        abort(404, description="This event does not exist.")
    except errors.DomainError as error:
        preview = {"ok": False, "text": str(error)}
        _show_error(form, error)
        return _capacity_page(detail, form, preview, UNPROCESSABLE)
    user = current_staff()
    current_app.logger.info(
        "capacity changed",
        extra={
            "event_id": event_id,
            "capacity": new_capacity,
            "promoted": promoted,
            "staff_email": user.email if user else None,
        },
    )
    flash(describe_change(new_capacity, promoted), "success")
    return redirect(url_for("admin.event", event_id=event_id))


# -- CSV export ------------------------------------------------------------------------------
def csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas: a text cell starting with = + - @ (or a tab or
    carriage return) gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


CSV_COLUMNS = [
    "Status",
    "Waitlist position",
    "Name",
    "Email",
    "Registered at (UTC)",
    "Confirmed at (UTC)",
    "Cancelled at (UTC)",
]


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


@bp.get("/events/<int:event_id>/attendees.csv")
@staff_required
def attendees_csv(event_id: int) -> Response:
    """Confirmed, then the waitlist in order, then cancelled: one row per registration."""
    _event_or_404(event_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in read_model.event_attendees(event_id):
        writer.writerow(
            [
                csv_safe(row["status"]),
                row["position"] if row["position"] is not None else "",
                csv_safe(row["name"]),
                csv_safe(row["email"]),
                _iso(row["created_at"]),
                _iso(row["confirmed_at"]),
                _iso(row["cancelled_at"]),
            ]
        )
    response = Response(buffer.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="event-{event_id}-attendees.csv"'
    )
    response.headers["Cache-Control"] = "no-store"
    return response
