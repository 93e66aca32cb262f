"""The map of signed CSRF tokens stays bounded: the least recently used goes first."""

from __future__ import annotations

from webapp.adapters.csrf_tokens import SignedTokens


def test_signed_tokens_keep_at_most_max_kept_and_drop_the_least_recently_used() -> None:
    kept = SignedTokens(max_kept=2)
    kept.put("ann", "ann-signed")
    kept.put("bob", "bob-signed")
    assert kept.get("ann") == "ann-signed"  # Ann is now the most recent

    kept.put("cid", "cid-signed")

    assert len(kept) == 2
    assert kept.get("bob") is None
    assert (kept.get("ann"), kept.get("cid")) == ("ann-signed", "cid-signed")
