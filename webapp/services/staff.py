"""Staff accounts (organisers): create, authenticate, list — and the ``flask users`` CLI.

Roles: ``viewer`` sees the admin pages, ``operator`` may also change things.
Passwords are hashed with argon2id (argon2-cffi's defaults); a hash made with older
parameters is re-hashed on the next successful login. Plain passwords are never
logged, stored or echoed: only the email appears in log lines.

Every function reads the current app's database unless an ``engine`` is given.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask.cli import AppGroup
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from webapp.adapters.audit import record_audit
from webapp.adapters.db import write_engine
from webapp.adapters.tables import staff_users
from webapp.domain import errors
from webapp.domain.model import EMAIL_MAX_LENGTH, NAME_MAX_LENGTH, normalize_email
from webapp.services.unit_of_work import utcnow

log = logging.getLogger(__name__)

VIEWER = "viewer"
OPERATOR = "operator"
ROLES = (VIEWER, OPERATOR)
MIN_PASSWORD_LENGTH = 12
#: argon2 pre-hashes long input cheaply, but a megabyte "password" is never legitimate
MAX_PASSWORD_LENGTH = 1024
GENERATED_PASSWORD_LENGTH = 20

_hasher = PasswordHasher()


class DuplicateStaffUser(errors.InvalidInput):
    """A staff account with this email exists already."""

    def __init__(self, email: str) -> None:
        super().__init__(f"A staff account for {email} already exists.", field="email")


@dataclass(frozen=True)
class StaffUser:
    """A staff account as the web layer sees it (never carries the password hash).

    Implements Flask-Login's user protocol (``is_authenticated``, ``is_active``,
    ``is_anonymous``, ``get_id``) without importing Flask.
    """

    id: int
    email: str
    name: str
    role: str
    active: bool
    created_at: datetime
    last_login_at: datetime | None

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def get_id(self) -> str:
        return str(self.id)


# -- validation and hashing (pure) ----------------------------------------------------------
def validate_password(password: str) -> None:
    """Raise ``InvalidInput(field="password")`` unless the password is acceptable."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise errors.InvalidInput(
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters long.",
            field="password",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise errors.InvalidInput(
            f"The password must be at most {MAX_PASSWORD_LENGTH} characters long.",
            field="password",
        )
    if not password.strip():
        raise errors.InvalidInput("The password cannot be only spaces.", field="password")


def validate_account(email: str, name: str, role: str) -> tuple[str, str]:
    """Check the account fields; returns the normalised (email, name)."""
    email = normalize_email(email or "")
    name = (name or "").strip()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > EMAIL_MAX_LENGTH or " " in email:
        raise errors.InvalidInput("Please enter a valid email address.", field="email")
    if not name:
        raise errors.InvalidInput("Please enter a name.", field="name")
    if len(name) > NAME_MAX_LENGTH:
        raise errors.InvalidInput(
            f"The name must be at most {NAME_MAX_LENGTH} characters.", field="name"
        )
    if role not in ROLES:
        raise errors.InvalidInput(
            f"The role must be one of: {', '.join(ROLES)}.",
            field="role",
        )
    return email, name


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so both cases take the same time."""
    return _hasher.hash(secrets.token_urlsafe(16))


def generate_password(length: int = GENERATED_PASSWORD_LENGTH) -> str:
    """A random password from letters and digits (about 119 bits for 20 characters)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# -- the database ---------------------------------------------------------------------------
def _engine(engine: Engine | None) -> Engine:
    if engine is not None:
        return engine
    from webapp.extensions import get_db

    return get_db().engine


def _user(row: RowMapping) -> StaffUser:
    return StaffUser(
        id=row["Id"],
        email=row["Email"],
        name=row["Name"],
        role=row["Role"],
        active=bool(row["Active"]),
        created_at=row["CreatedAt"],
        last_login_at=row["LastLoginAt"],
    )


def _audit(conn: Connection, actor: str, action: str, target: dict[str, str], outcome: str) -> None:
    record_audit(conn, at=utcnow(), actor=actor, action=action, target=target, outcome=outcome)


def create_user(
    email: str,
    name: str,
    role: str,
    password: str,
    *,
    actor: str = "cli",
    engine: Engine | None = None,
) -> StaffUser:
    """Create a staff account (audited in the same transaction).

    Raises ``InvalidInput`` (with ``.field``) for a bad email/name/role/password and
    ``DuplicateStaffUser`` when the email is taken (case-insensitively).
    """
    email, name = validate_account(email, name, role)
    validate_password(password)
    password_hash = hash_password(password)
    now = utcnow()
    try:
        with write_engine(_engine(engine)).begin() as conn:
            taken = conn.execute(
                select(staff_users.c.Id).where(staff_users.c.Email == email)
            ).first()
            if taken is not None:
                raise DuplicateStaffUser(email)
            conn.execute(
                insert(staff_users).values(
                    Email=email,
                    Name=name,
                    PasswordHash=password_hash,
                    Role=role,
                    Active=True,
                    CreatedAt=now,
                )
            )
            _audit(conn, actor, "staff.create", {"email": email, "role": role}, "created")
            row = conn.execute(select(staff_users).where(staff_users.c.Email == email)).one()
    except IntegrityError as error:  # a concurrent create of the same email
        raise DuplicateStaffUser(email) from error
    log.info("staff account created", extra={"staff_email": email, "role": role})
    return _user(row._mapping)


def authenticate(email: str, password: str, *, engine: Engine | None = None) -> StaffUser | None:
    """The active account with this email and password, or None (same answer, and
    about the same time, for an unknown email, a wrong password or a disabled account).

    On success records the login time and re-hashes an outdated password hash.
    """
    email = normalize_email(email or "")
    password = password or ""
    if len(password) > MAX_PASSWORD_LENGTH:
        return None
    db = _engine(engine)
    with db.connect() as conn:
        row = conn.execute(select(staff_users).where(staff_users.c.Email == email)).first()
    if row is None:
        password_matches(_dummy_hash(), password)
        log.info("staff login refused: unknown account", extra={"staff_email": email})
        return None
    stored = row._mapping
    if not password_matches(stored["PasswordHash"], password):
        log.info("staff login refused: wrong password", extra={"staff_email": email})
        return None
    if not stored["Active"]:
        log.info("staff login refused: account disabled", extra={"staff_email": email})
        return None
    values: dict[str, object] = {"LastLoginAt": utcnow()}
    if needs_rehash(stored["PasswordHash"]):
        values["PasswordHash"] = hash_password(password)
        log.info("staff password re-hashed with current parameters", extra={"staff_email": email})
    with write_engine(db).begin() as conn:
        conn.execute(update(staff_users).where(staff_users.c.Id == stored["Id"]).values(**values))
        fresh = conn.execute(select(staff_users).where(staff_users.c.Id == stored["Id"])).one()
    return _user(fresh._mapping)


def check_password(user_id: int, password: str, *, engine: Engine | None = None) -> bool:
    """Whether ``password`` is the current password of the (active) account ``user_id``;
    used to confirm a recent login before destructive actions."""
    with _engine(engine).connect() as conn:
        row = conn.execute(
            select(staff_users.c.PasswordHash, staff_users.c.Active).where(
                staff_users.c.Id == user_id
            )
        ).first()
    if row is None or not row.Active or len(password or "") > MAX_PASSWORD_LENGTH:
        return False
    return password_matches(row.PasswordHash, password or "")


def get_user(user_id: int | str, *, engine: Engine | None = None) -> StaffUser | None:
    try:
        key = int(user_id)
    except (TypeError, ValueError):
        return None
    with _engine(engine).connect() as conn:
        row = conn.execute(select(staff_users).where(staff_users.c.Id == key)).first()
    return _user(row._mapping) if row else None


def list_users(*, engine: Engine | None = None) -> list[StaffUser]:
    with _engine(engine).connect() as conn:
        rows = conn.execute(select(staff_users).order_by(staff_users.c.Email)).all()
    return [_user(row._mapping) for row in rows]


def count_users(*, engine: Engine | None = None) -> int:
    with _engine(engine).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(staff_users)).scalar_one())


def ensure_admin(email: str, name: str, *, engine: Engine | None = None) -> str | None:
    """Create an operator with a random strong password when no staff account exists.

    Returns that password (to be shown once, e.g. by ``make run``) or None when staff
    accounts exist already. The password is not logged.
    """
    if count_users(engine=engine):
        return None
    password = generate_password()
    try:
        create_user(email, name, OPERATOR, password, actor="bootstrap", engine=engine)
    except DuplicateStaffUser:  # another process bootstrapped at the same moment
        return None
    return password


# -- ``flask users`` -----------------------------------------------------------------------
#: an AppGroup, so each command runs inside the app context
users_group = AppGroup("users", help="Staff accounts of the admin pages.")


@users_group.command("create")
@click.option("--email", required=True, help="Login email (unique, case-insensitive).")
@click.option("--name", required=True, help="Display name.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="viewer sees; operator may change events and capacities.",
)
@click.option(
    "--password",
    default=None,
    help=f"At least {MIN_PASSWORD_LENGTH} characters; prompted (hidden) when omitted.",
)
def users_create(email: str, name: str, role: str, password: str | None) -> None:
    """Create a staff account."""
    if password is None:
        password = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True, type=str
        )
    try:
        user = create_user(email, name, role, password or "", actor="cli")
    except errors.DomainError as error:
        click.echo(f"Error: {error}", err=True)
        raise click.exceptions.Exit(1) from None
    click.echo(f"created {user.role} {user.email} (id {user.id})")


@users_group.command("list")
def users_list() -> None:
    """List staff accounts (no password hashes)."""
    users = list_users()
    if not users:
        click.echo("no staff accounts; create one with: flask users create")
        return
    for user in users:
        last = user.last_login_at.strftime("%Y-%m-%d %H:%M UTC") if user.last_login_at else "never"
        state = "" if user.active else " (disabled)"
        click.echo(f"{user.id}\t{user.email}\t{user.name}\t{user.role}{state}\tlast login: {last}")
