"""URLs as tor-sets shows them: :func:`redact_url` hides the credentials a URL carries.

A URL may carry a user name and password before its host (``https://user:secret@host/path``, RFC 3986
section 3.2.1, "userinfo"). Whatever tor-sets prints, logs, writes into a file or pushes into an artifact shows such
a URL only through :func:`redact_url`.

Exports :func:`redact_url`.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

#: what stands in for the userinfo of a URL
REDACTED = "***"

#: where an authority ends: RFC 3986's "/", "?" and "#", and white space, which no URL may hold raw, so that a
#: message quoting a URL is read as words
_AUTHORITY_END = frozenset("/?# \t\r\n\f\v")
#: text that starts as a URL with an authority: ``scheme://`` or ``//``
_WITH_AUTHORITY = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//")
#: a URL missing its scheme: the authority runs from the start to the first "/", "?" or "#"
_SCHEMELESS = re.compile(r"^(\s*)[^/?#\s]*@")


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with the userinfo of every authority replaced by ``***``.

    An authority starts after ``//`` and ends at the first ``/``, ``?``, ``#`` or white space; its userinfo ends at
    its last ``@``, the way ``urllib.parse`` and urllib3 read it. Text that starts without ``//`` is read as a URL
    missing its scheme, so ``user:pass@host`` is hidden too. Over-redacting odd text is harmless; showing a secret
    is not. Never raises; text without such an ``@`` comes back unchanged.

    >>> redact_url("https://user:secret@example.org:8443/falco?x=1")
    'https://***@example.org:8443/falco?x=1'
    >>> redact_url("mirror http://u:p@a.example/x and oci://v:q@b.example/tor:1")
    'mirror http://***@a.example/x and oci://***@b.example/tor:1'
    >>> redact_url("http://127.0.0.1:2802/a@b"), redact_url("user:pass@host:80"), redact_url("not a url")
    ('http://127.0.0.1:2802/a@b', '***@host:80', 'not a url')
    >>> redact_url("HTTP 503 from http://u:p%40ss@127.0.0.1:8080; contact a@b.example")
    'HTTP 503 from http://***@127.0.0.1:8080; contact a@b.example'
    >>> redact_url("/var/lib/tor-sets/details@2026.json")
    '/var/lib/tor-sets/details@2026.json'
    """
    if not _WITH_AUTHORITY.match(url):
        url = _SCHEMELESS.sub(lambda m: f"{m[1]}{REDACTED}@", url, count=1)
    parts: list[str] = []
    rest = url
    while (start := rest.find("//")) >= 0:
        start += 2
        end = start
        while end < len(rest) and rest[end] not in _AUTHORITY_END:
            end += 1
        authority = rest[start:end]
        if "@" in authority:
            authority = f"{REDACTED}@" + authority.rpartition("@")[2]
        parts.append(rest[:start] + authority)
        rest = rest[end:]
    parts.append(rest)
    return "".join(parts)
