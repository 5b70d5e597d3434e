"""``tor_sets.urls.redact_url``: credentials never survive, everything else is kept byte for byte."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tor_sets import urls
from tor_sets.urls import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pass@host/details", "http://***@host/details"),
        ("https://user@host:8443/x?y=1#z", "https://***@host:8443/x?y=1#z"),
        ("http://a:b@c@host/", "http://***@host/"),  # the host is what follows the last '@'
        ("http://user:p%40ss@[2001:db8::1]:80/", "http://***@[2001:db8::1]:80/"),
        ("oci://u:p@registry.example.com/tor:latest", "oci://***@registry.example.com/tor:latest"),
        (
            "mirror http://u:p@a.example/x and https://v:q@b.example",
            "mirror http://***@a.example/x and https://***@b.example",
        ),
        ("http://u:p@host", "http://***@host"),
        ("https://host/path/a@b", "https://host/path/a@b"),
        ("https://host?mail=a@b", "https://host?mail=a@b"),
        ("bundled:details-2026-02-28.json.gz", "bundled:details-2026-02-28.json.gz"),
        ("user:pass@host", "user:pass@host"),  # not a URL: nothing to judge
        ("", ""),
        ("://", "://"),
        ("http://[::1", "http://[::1"),  # malformed: still no exception
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@given(st.text())
def test_never_raises_and_leaves_no_user_information(text: str) -> None:
    redacted = redact_url(text)
    assert isinstance(redacted, str)
    assert redact_url(redacted) == redacted  # idempotent: nothing left to redact


@given(
    st.from_regex(
        r"[a-z]{3,8}://[A-Za-z0-9._~-]{1,12}:[A-Za-z0-9._~-]{1,12}@[a-z0-9.-]{1,20}(/[a-z0-9/]*)?", fullmatch=True
    )
)
def test_user_information_is_replaced_and_the_rest_kept(url: str) -> None:
    scheme, _, rest = url.partition("://")
    host_and_path = rest.partition("@")[2]
    assert redact_url(url) == f"{scheme}://***@{host_and_path}"


def test_doctests() -> None:
    failures, tried = doctest.testmod(urls)
    assert tried >= 3 and failures == 0
