"""Retry schedule of failed outbox messages: exponential, capped, jittered upwards."""

from __future__ import annotations

import pytest

from webapp.services.delivery import BACKOFF_JITTER, fingerprint, retry_delay


def test_delays_double_from_the_base_without_jitter() -> None:
    assert [retry_delay(n, 5.0, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_jitter_only_stretches_the_delay_by_at_most_a_quarter() -> None:
    assert retry_delay(3, 5.0, rand=lambda: 1.0) == pytest.approx(20 * (1 + BACKOFF_JITTER))
    samples = [retry_delay(2, 5.0) for _ in range(500)]
    assert min(samples) >= 10.0
    assert max(samples) <= 10.0 * (1 + BACKOFF_JITTER)
    assert len({round(s, 6) for s in samples}) > 400  # spread, not one value


def test_delay_is_capped() -> None:
    assert retry_delay(40, 5.0, cap=600.0, rand=lambda: 0.0) == 600.0


def test_failure_counts_start_at_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, 5.0)


def _raise_in_here(kind: type[Exception]) -> Exception:
    try:
        raise kind("boom")
    except Exception as error:
        return error


def test_fingerprint_groups_same_cause_and_separates_different_ones() -> None:
    first = fingerprint("RegistrationCreated", _raise_in_here(ValueError))
    again = fingerprint("RegistrationCreated", _raise_in_here(ValueError))
    other_type = fingerprint("RegistrationPromoted", _raise_in_here(ValueError))
    other_error = fingerprint("RegistrationCreated", _raise_in_here(KeyError))
    assert first == again
    assert len({first, other_type, other_error}) == 3
