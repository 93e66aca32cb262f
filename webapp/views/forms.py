"""Flask-WTF forms of the public pages.

The CSRF token comes with every FlaskForm (``form.csrf_token``); CSRFProtect also
checks it app-wide before any view runs.
"""

from __future__ import annotations

import re
import uuid

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp

from webapp.domain.model import EMAIL_MAX_LENGTH, NAME_MAX_LENGTH

_UUID_HEX = re.compile(r"^[0-9a-f]{32}$")


def new_idempotency_token() -> str:
    """A fresh token per rendered form: resubmitting the same form repeats, not duplicates."""
    return uuid.uuid4().hex


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class RegistrationForm(FlaskForm):
    name = StringField(
        "Your name",
        filters=[_strip],
        validators=[
            DataRequired(message="Please enter your name."),
            Length(
                max=NAME_MAX_LENGTH,
                message=f"Your name must be at most {NAME_MAX_LENGTH} characters.",
            ),
        ],
        render_kw={"autocomplete": "name", "maxlength": NAME_MAX_LENGTH},
    )
    email = EmailField(
        "Email address",
        filters=[_strip],
        validators=[
            DataRequired(message="Please enter your email address."),
            Length(max=EMAIL_MAX_LENGTH, message="Please enter a valid email address."),
            Email(message="Please enter a valid email address, like name@example.com."),
        ],
        render_kw={"autocomplete": "email", "maxlength": EMAIL_MAX_LENGTH},
    )
    idempotency_token = HiddenField(
        validators=[Optional(), Regexp(_UUID_HEX, message="This form is damaged; reload it.")]
    )


class CancelForm(FlaskForm):
    """Only the CSRF token: the confirmation step is the POST itself."""
