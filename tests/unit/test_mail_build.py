"""What a mail client reads from a built mail: headers decoded, both bodies, and
transfer encodings a person can still read in the ``.eml`` file."""

from __future__ import annotations

import email
import email.policy
import random
import string
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.policy import compat32
from typing import Any

import pytest

from webapp.adapters.mail import MAIL_POLICY, Mailer, boundary_for, message_id_for


def _context(name: str, title: str) -> dict[str, Any]:
    view = {
        "email": "guest@example.test",
        "name": name,
        "status": "Confirmed",
        "title": title,
        "event_title": title,
        "venue": "Hall 9",
        "start_date": datetime(2027, 3, 4, 18, 30, tzinfo=UTC),
        "position": None,
        "event_id": 1,
        "registration_id": "r-1",
    }
    return {"r": view, "status_url": "http://localhost/registrations/tok"}


def _read(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_non_ascii_names_and_titles_survive_the_round_trip(tmp_path: Any) -> None:
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path), "MAIL_FROM": "Événements <ev@example.test>"})
    mail = mailer.build(
        "zoe@example.test",
        "confirmation",
        _context("Zoë Ångström", "Café Pythön Zürich"),
        "m-1/confirmation",
    )
    raw = mail.as_bytes()
    assert raw.isascii() is False  # 8bit UTF-8 bodies, not base64
    head = raw.split(b"\n\n", 1)[0]
    assert head.isascii()  # headers: RFC 2047 words
    back = _read(raw)
    assert back["Subject"] == "You're registered: Café Pythön Zürich"
    assert back["From"].addresses[0].display_name == "Événements"
    assert back["From"].addresses[0].addr_spec == "ev@example.test"
    assert back["Message-ID"] == message_id_for("m-1/confirmation", "ev@example.test")
    assert back.get_content_type() == "multipart/alternative"
    plain = back.get_body(preferencelist=("plain",))
    html = back.get_body(preferencelist=("html",))
    assert plain["Content-Transfer-Encoding"] == "8bit"
    assert "Hello Zoë Ångström," in plain.get_content()
    assert "http://localhost/registrations/tok" in plain.get_content()
    assert "<strong>Café Pythön Zürich</strong>" in html.get_content()


def test_an_ascii_mail_is_plain_7bit(tmp_path: Any) -> None:
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path)})
    raw = mailer.build(
        "ada@example.test", "confirmation", _context("Ada", "Async Conf"), "m-2/confirmation"
    ).as_bytes()
    back = _read(raw)
    assert back["Subject"] == "You're registered: Async Conf"
    assert back["To"] == "ada@example.test"
    for part in back.iter_parts():
        assert part["Content-Transfer-Encoding"] == "7bit"
        assert part.get_content_charset() == "utf-8"


def test_a_mail_sent_again_has_the_same_bytes_but_its_date(tmp_path: Any) -> None:
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path)})
    context = _context("Ada", "Async Conf")
    first, again, other = (
        mailer.build("ada@example.test", "confirmation", context, key)
        for key in ("m-3/confirmation", "m-3/confirmation", "m-4/confirmation")
    )
    for mail in (first, again, other):
        del mail["Date"]
    assert first.as_bytes() == again.as_bytes()
    assert first.get_boundary() != other.get_boundary()


def test_a_body_holding_the_boundary_gets_another_one(tmp_path: Any) -> None:
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path)})
    usual = boundary_for("m-5/confirmation", ())
    name = f"Ada\n--{usual}\n"  # as a line of the body it would end the part early
    raw = mailer.build(
        "ada@example.test", "confirmation", _context(name, "Async Conf"), "m-5/confirmation"
    ).as_bytes()
    back = _read(raw)
    assert back.get_boundary() != usual
    parts = list(back.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert f"Hello {name}," in parts[0].get_content()


def test_mails_have_the_bytes_the_stdlib_policy_writes(tmp_path: Any) -> None:
    """The headers' shortcut writes what ``compat32`` writes, folded and encoded
    headers included."""
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path), "MAIL_FROM": "Événements <ev@example.test>"})
    for name, title, to in [
        ("Ada", "Async Conf", "ada@example.test"),
        ("Zoë Ångström", "Café Pythön Zürich", "zoe@example.test"),
        ("A" * 40, "A very long event title, " * 5, f"{'x' * 70}@example.test"),
    ]:
        mail = mailer.build(to, "confirmation", _context(name, title), f"m-6/{name}")
        assert mail.as_bytes() == mail.as_bytes(policy=compat32)


def test_the_header_shortcut_agrees_with_compat32_on_any_value() -> None:
    rnd = random.Random(7)
    alphabet = string.printable + "  \t\x1c\x7fé"
    values = ["", " x", "x ", "a  b", "a\tb", "x" * 72, "x" * 73, "x" * 200]
    values += [
        "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 90))) for _ in range(3000)
    ]
    for value in values:
        for name in ("To", "Subject", "Content-Type"):
            try:
                expected = compat32.fold_binary(name, value)
            except HeaderParseError:  # a value that looks like a second header
                with pytest.raises(HeaderParseError):
                    MAIL_POLICY.fold_binary(name, value)
                continue
            assert MAIL_POLICY.fold_binary(name, value) == expected, (name, value)


@pytest.mark.parametrize(
    ("config", "reloads"),
    [
        ({}, False),
        ({"DEBUG": True}, True),
        ({"TEMPLATES_AUTO_RELOAD": True}, True),
        ({"DEBUG": True, "TEMPLATES_AUTO_RELOAD": False}, False),
    ],
)
def test_an_edited_mail_template_shows_in_the_next_mail_only_where_flask_reloads_pages(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], reloads: bool
) -> None:
    import os
    import shutil

    from webapp.adapters import mail as mail_module

    templates = tmp_path / "templates"
    shutil.copytree(mail_module.TEMPLATES_DIR / "mail", templates / "mail")
    monkeypatch.setattr(mail_module, "TEMPLATES_DIR", templates)
    mailer = Mailer({"MAILBOX_DIR": str(tmp_path / "mailbox"), **config})
    context = _context("Ada", "Async Conf")

    def subject() -> str:
        return str(
            _read(mailer.build("ada@example.test", "confirmation", context, "k").as_bytes())[
                "Subject"
            ]
        )

    assert subject() == "You're registered: Async Conf"
    source = templates / "mail" / "confirmation.txt"
    text = source.read_text()
    source.write_text(text.replace("You're registered:", "Seat confirmed:", 1))
    later = os.stat(source).st_mtime + 5  # a clearly newer file, whatever the clock's grain
    os.utime(source, (later, later))
    expected = "Seat confirmed: Async Conf" if reloads else "You're registered: Async Conf"
    assert subject() == expected
