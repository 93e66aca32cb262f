"""``flask users create`` / ``flask users list`` through the app's CLI runner."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from webapp.adapters.tables import audit_log, staff_users
from webapp.extensions import get_db

pytestmark = pytest.mark.redis

PASSWORD = "a long enough passphrase"


def users(app: Flask, *args: str, input: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["users", *args], input=input)


def accounts(app: Flask) -> list[tuple[str, str, str]]:
    with get_db(app).engine.connect() as conn:
        rows = conn.execute(
            select(staff_users.c.Email, staff_users.c.Name, staff_users.c.Role).order_by(
                staff_users.c.Email
            )
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_create_with_password_option(app: Flask) -> None:
    result = users(
        app, "create", "--email", "Olga@Example.test", "--name", "Olga", "--role", "operator",
        "--password", PASSWORD,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "created operator olga@example.test" in result.output
    assert accounts(app) == [("olga@example.test", "Olga", "operator")]
    with get_db(app).engine.connect() as conn:
        audit = conn.execute(select(audit_log.c.Actor, audit_log.c.Action)).all()
    assert [tuple(a) for a in audit] == [("cli", "staff.create")]


def test_create_prompts_for_a_hidden_confirmed_password(app: Flask) -> None:
    result = users(
        app, "create", "--email", "v@example.test", "--name", "Vic", "--role", "viewer",
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert "Repeat for confirmation" in result.output
    assert accounts(app) == [("v@example.test", "Vic", "viewer")]


def test_create_refuses_mismatched_confirmation(app: Flask) -> None:
    result = users(
        app, "create", "--email", "v@example.test", "--name", "Vic", "--role", "viewer",
        input=f"{PASSWORD}\nsomething else entirely\n",
    )  # fmt: skip
    assert result.exit_code != 0
    assert "do not match" in result.output
    assert accounts(app) == []


def test_duplicate_email_is_refused_with_exit_code_1(app: Flask) -> None:
    first = users(
        app, "create", "--email", "dup@example.test", "--name", "One", "--role", "viewer",
        "--password", PASSWORD,
    )  # fmt: skip
    assert first.exit_code == 0
    second = users(
        app, "create", "--email", "DUP@example.test", "--name", "Two", "--role", "operator",
        "--password", PASSWORD,
    )  # fmt: skip
    assert second.exit_code == 1
    assert "A staff account for dup@example.test already exists." in second.output
    assert accounts(app) == [("dup@example.test", "One", "viewer")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "s@example.test", "--role", "viewer", "--password", "short"],
         "at least 12 characters"),
        (["--email", "not-an-email", "--role", "viewer", "--password", PASSWORD],
         "valid email"),
        (["--email", "s@example.test", "--role", "admin", "--password", PASSWORD],
         "'admin' is not one of 'viewer', 'operator'"),
    ],
)  # fmt: skip
def test_bad_account_data_is_refused(app: Flask, args: list[str], message: str) -> None:
    result = users(app, "create", "--name", "Sam", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert accounts(app) == []


def test_list_shows_accounts_without_hashes(app: Flask) -> None:
    assert "no staff accounts" in users(app, "list").output
    for email, role in (("b@example.test", "viewer"), ("a@example.test", "operator")):
        users(app, "create", "--email", email, "--name", email[0].upper(), "--role", role,
              "--password", PASSWORD)  # fmt: skip
    result = users(app, "list")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[1:4] for line in lines] == [
        ["a@example.test", "A", "operator"],
        ["b@example.test", "B", "viewer"],
    ]
    assert "last login: never" in lines[0]
    assert "$argon2" not in result.output
