"""The error summary the worker stores beside the traceback: what the dashboard lists
and searches."""

from __future__ import annotations

import smtplib

from webapp.services.delivery import error_summary


def test_names_the_class_as_the_traceback_does_and_keeps_the_message() -> None:
    disconnected = smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
    assert error_summary(disconnected) == (
        "smtplib.SMTPServerDisconnected: Connection unexpectedly closed"
    )
    assert error_summary(KeyError("email")) == "KeyError: 'email'"


def test_keeps_only_the_first_line_and_at_most_300_characters() -> None:
    assert error_summary(ValueError("first line\n\tsecond line")) == "ValueError: first line"
    assert error_summary(ValueError("x" * 1000)) == "ValueError: " + "x" * 288


def test_an_error_without_a_message_is_its_class() -> None:
    assert error_summary(TimeoutError()) == "TimeoutError"
    assert error_summary(smtplib.SMTPServerDisconnected()) == "smtplib.SMTPServerDisconnected"
