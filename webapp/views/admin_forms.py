"""Flask-WTF forms of the login and organiser pages (each carries its CSRF token).

Dates are entered and shown in UTC: the start field is a ``datetime-local`` input
labelled "(UTC)", and ``EventForm.start_utc()`` attaches the UTC zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    Field,
    PasswordField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError

from webapp.domain.model import MAX_CAPACITY, TITLE_MAX_LENGTH
from webapp.services.staff import MAX_PASSWORD_LENGTH

#: the first is how the field renders (what ``datetime-local`` inputs expect)
START_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
VENUE_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 10_000


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class CapacityField(StringField):
    """A whole number 0..MAX_CAPACITY with a clear message (a text field, so the
    browser never silently drops what the person typed)."""

    def process_formdata(self, valuelist: list[Any]) -> None:
        super().process_formdata(valuelist)
        self.number: int | None = None
        text = (self.data or "").strip()
        self.data = text
        if text.lstrip("-").isdigit():
            self.number = int(text)


def capacity_value(field: Field) -> int:
    number = getattr(field, "number", None)
    assert number is not None, "validate the form first"
    return int(number)


def _validate_capacity(form: FlaskForm, field: Field) -> None:
    text = (field.data or "").strip() if isinstance(field.data, str) else field.data
    if text in ("", None):
        raise ValidationError("Please enter the capacity.")
    number = getattr(field, "number", None)
    if number is None:
        raise ValidationError("Capacity must be a whole number, like 25.")
    if number < 0:
        raise ValidationError("Capacity must be zero or a positive number.")
    if number > MAX_CAPACITY:
        raise ValidationError(f"Capacity must be at most {MAX_CAPACITY:,}.")


class LoginForm(FlaskForm):
    email = EmailField(
        "Email",
        filters=[_strip],
        validators=[DataRequired(message="Please enter your email."), Length(max=254)],
        render_kw={"autocomplete": "username"},
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired(message="Please enter your password."),
            Length(max=MAX_PASSWORD_LENGTH),
        ],
        render_kw={"autocomplete": "current-password"},
    )


class ReauthForm(FlaskForm):
    """Confirm the current account's password before a destructive action."""

    password = PasswordField(
        "Password",
        validators=[
            DataRequired(message="Please enter your password."),
            Length(max=MAX_PASSWORD_LENGTH),
        ],
        render_kw={"autocomplete": "current-password"},
    )


class EventForm(FlaskForm):
    """Event details (edit page); ``CreateEventForm`` adds the capacity."""

    title = StringField(
        "Title",
        filters=[_strip],
        validators=[
            DataRequired(message="The event needs a title."),
            Length(
                max=TITLE_MAX_LENGTH,
                message=f"The title must be at most {TITLE_MAX_LENGTH} characters.",
            ),
        ],
        render_kw={"maxlength": TITLE_MAX_LENGTH},
    )
    description = TextAreaField(
        "Description",
        filters=[_strip],
        validators=[
            Length(
                max=DESCRIPTION_MAX_LENGTH,
                message=f"The description must be at most {DESCRIPTION_MAX_LENGTH:,} characters.",
            )
        ],
    )
    venue = StringField(
        "Venue",
        filters=[_strip],
        validators=[
            Length(
                max=VENUE_MAX_LENGTH,
                message=f"The venue must be at most {VENUE_MAX_LENGTH} characters.",
            )
        ],
        render_kw={"maxlength": VENUE_MAX_LENGTH},
    )
    start = DateTimeLocalField(
        "Start (UTC)",
        format=START_FORMATS,
        invalid_value_message=(
            "Please enter the start as a date and time in UTC, like 2030-05-17 18:30."
        ),
        validators=[InputRequired(message="Please enter the start date and time (UTC).")],
        description="Date and time in UTC, e.g. 2030-05-17 18:30.",
    )
    registration_open = BooleanField("Registration open", default=True)

    def start_utc(self) -> datetime:
        value = self.start.data
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class CreateEventForm(EventForm):
    capacity = CapacityField(
        "Capacity (seats)",
        validators=[_validate_capacity],
        render_kw={"inputmode": "numeric"},
    )


class CapacityForm(FlaskForm):
    capacity = CapacityField(
        "New capacity (seats)",
        validators=[_validate_capacity],
        render_kw={"inputmode": "numeric"},
    )
