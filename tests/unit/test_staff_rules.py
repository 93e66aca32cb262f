"""Pure rules of the staff and organiser side: passwords, accounts, wording, CSV cells."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from argon2 import PasswordHasher

from webapp.domain.errors import InvalidInput
from webapp.services import staff
from webapp.services.events import CapacityPreview
from webapp.views.admin import csv_safe, describe_change, describe_preview
from webapp.views.auth import safe_next


@pytest.mark.parametrize("password", ["", "short", "elevenchars", " " * 12, "x" * 1025])
def test_weak_or_absurd_passwords_are_refused(password: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        staff.validate_password(password)
    assert refused.value.field == "password"


def test_twelve_characters_are_enough() -> None:
    staff.validate_password("twelve chars")


@pytest.mark.parametrize(
    ("email", "name", "role", "field"),
    [
        ("no-at-sign", "Ann", "viewer", "email"),
        ("ann@localhost", "Ann", "viewer", "email"),
        ("a nn@example.test", "Ann", "viewer", "email"),
        ("ann@example.test", "  ", "viewer", "name"),
        ("ann@example.test", "A" * 201, "viewer", "name"),
        ("ann@example.test", "Ann", "admin", "role"),
    ],
)
def test_bad_account_fields_name_the_field(email: str, name: str, role: str, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        staff.validate_account(email, name, role)
    assert refused.value.field == field


def test_account_email_is_normalised() -> None:
    assert staff.validate_account(" Ann@Example.TEST ", " Ann ", "operator") == (
        "ann@example.test",
        "Ann",
    )


def test_hashes_are_argon2id_and_verify_only_the_right_password() -> None:
    hashed = staff.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse battery" not in hashed
    assert staff.password_matches(hashed, "correct horse battery")
    assert not staff.password_matches(hashed, "correct horse battery!")
    assert not staff.password_matches("not a hash", "correct horse battery")
    assert not staff.needs_rehash(hashed)


def test_hashes_with_old_parameters_need_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("x" * 12)
    assert staff.password_matches(weak, "x" * 12)
    assert staff.needs_rehash(weak)


def test_generated_passwords_are_long_random_and_acceptable() -> None:
    passwords = {staff.generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 20
        staff.validate_password(password)


def test_staff_user_speaks_flask_login() -> None:
    user = staff.StaffUser(7, "a@example.test", "A", "viewer", True, datetime.now(UTC), None)
    assert (user.is_authenticated, user.is_active, user.is_anonymous) == (True, True, False)
    assert user.get_id() == "7"
    assert not user.is_operator
    disabled = staff.StaffUser(8, "b@example.test", "B", "operator", False, user.created_at, None)
    assert not disabled.is_active
    assert disabled.is_operator


@pytest.mark.parametrize(
    ("preview", "text"),
    [
        (CapacityPreview(10, 15, 10, 8, 5),
         "+5 promotes 5 waiting people; 3 will still be waiting."),
        (CapacityPreview(10, 11, 10, 1, 1), "+1 promotes 1 waiting person."),
        (CapacityPreview(10, 20, 10, 4, 4), "+10 promotes 4 waiting people; 6 seats stay free."),
        (CapacityPreview(10, 12, 7, 0, 0), "+2 adds 2 free seats; nobody is waiting."),
        (CapacityPreview(10, 8, 7, 0, 0),
         "-2 removes 2 free seats; 1 seat stays free and nobody loses their seat."),
        (CapacityPreview(10, 10, 10, 3, 0), "No change: the capacity stays at 10."),
    ],
)  # fmt: skip
def test_capacity_preview_wording(preview: CapacityPreview, text: str) -> None:
    assert describe_preview(preview) == text


def test_capacity_change_flash_wording() -> None:
    assert describe_change(15, 3) == "Capacity 15: 3 people promoted."
    assert describe_change(11, 1) == "Capacity 11: 1 person promoted."
    assert describe_change(9, 0) == "Capacity 9: nobody promoted."


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+33 1 23", "'+33 1 23"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=cmd", "'\t=cmd"),
        ("Ann = Bob", "Ann = Bob"),
        ("", ""),
        (3, 3),
    ],
)
def test_csv_cells_cannot_start_a_formula(value: object, expected: object) -> None:
    assert csv_safe(value) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin/events/3", "/admin/events/3"),
        ("/admin/?page=2", "/admin/?page=2"),
        ("//evil.example/", None),
        ("https://evil.example/", None),
        ("/\\evil.example", None),
        ("javascript:alert(1)", None),
        ("/admin\r\nSet-Cookie: x", None),
        ("", None),
        (None, None),
    ],
)
def test_next_parameter_stays_on_site(target: str | None, expected: str | None) -> None:
    assert safe_next(target) == expected
