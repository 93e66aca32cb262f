"""What a mail client reads from a built mail: headers decoded, both bodies, and
transfer encodings a person can still read in the ``.eml`` file."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from typing import Any

from webapp.adapters.mail import Mailer, boundary_for, message_id_for


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
