"""redact_url: the userinfo of a URL never shows; everything else stays as written (one table, properties)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tor_sets.urls
from tor_sets.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@example.org:8443/falco?x=1#top", "https://***@example.org:8443/falco?x=1#top"),
        ("http://tor-sets:s3cret@127.0.0.1:2802/", "http://***@127.0.0.1:2802/"),
        ("http://token@[::1]:2802/falco", "http://***@[::1]:2802/falco"),
        ("http://u:p@ss@host/x", "http://***@host/x"),  # the userinfo ends at the last "@" of the authority
        ("http://@host/", "http://***@host/"),
        ("HTTPS://u:p@host", "HTTPS://***@host"),
        (" http://u:p@host/", " http://***@host/"),  # requests strips the space and would use the credentials
        ("//u:p@host/", "//***@host/"),
        ("u:p@host:80/a//b", "***@host:80/a//b"),  # no scheme: still hidden
        ("http://u:p@[::1/", "http://***@[::1/"),  # not even a valid URL
        ("http://127.0.0.1:2802/", "http://127.0.0.1:2802/"),
        ("http://host/path@x", "http://host/path@x"),  # "@" in the path, query or fragment is no userinfo
        ("http://host?to=a@b", "http://host?to=a@b"),
        ("http://host#a@b", "http://host#a@b"),
        (
            "https://onionoo.example/details?type=relay&fields=a,b",
            "https://onionoo.example/details?type=relay&fields=a,b",
        ),
        ("", ""),
        ("not a url", "not a url"),
        ("http://user:p%40ss@[2001:db8::1]:80/", "http://***@[2001:db8::1]:80/"),
        ("oci://u:p@registry.example.com/tor:latest", "oci://***@registry.example.com/tor:latest"),
        (
            "mirror http://u:p@a.example/x and https://v:q@b.example",
            "mirror http://***@a.example/x and https://***@b.example",
        ),
        ("bundled:details-2026-02-28.json.gz", "bundled:details-2026-02-28.json.gz"),
        ("://", "://"),
        ("http://[::1", "http://[::1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# a URL holds no raw white space (RFC 3986): where one seems to, the authority ends there (messages read as words)
_URL_CHARS = st.characters(blacklist_characters="/?#@", blacklist_categories=("Zs", "Zl", "Zp", "Cc"))


@given(user=st.text(_URL_CHARS, min_size=1), secret=st.text(_URL_CHARS, min_size=1))
def test_a_secret_never_shows(user: str, secret: str) -> None:
    shown = redact_url(f"https://{user}:{secret}@example.org:8443/path?q=1")
    assert shown == "https://***@example.org:8443/path?q=1"


@given(st.text())
def test_never_raises_and_is_idempotent(text: str) -> None:
    redacted = redact_url(text)
    assert isinstance(redacted, str)
    assert redact_url(redacted) == redacted  # nothing left to redact


@given(
    st.from_regex(
        r"[a-z]{3,8}://[A-Za-z0-9._~-]{1,12}:[A-Za-z0-9._~-]{1,12}@[a-z0-9.-]{1,20}(/[a-z0-9/]*)?", fullmatch=True
    )
)
def test_user_information_is_replaced_and_the_rest_kept(url: str) -> None:
    scheme, _, rest = url.partition("://")
    assert redact_url(url) == f"{scheme}://***@{rest.partition('@')[2]}"


def test_doctests() -> None:
    assert doctest.testmod(tor_sets.urls).failed == 0
