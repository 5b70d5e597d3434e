"""URLs as tor-sets writes them into files, logs and artifacts: without the credentials they may carry.

Exports :func:`redact_url`.
"""

from __future__ import annotations

__all__ = ["redact_url"]

_AUTHORITY_END = "/?#\\ \t\r\n"


def redact_url(url: str) -> str:
    """``url`` with the user information of every ``scheme://user:password@host`` in it replaced by ``***``.

    Works on any text and never raises: text without ``://`` or without ``@`` in an authority comes back unchanged.

    >>> redact_url("https://alice:s3cret@onionoo.example/details?type=relay")
    'https://***@onionoo.example/details?type=relay'
    >>> redact_url("http://token@[::1]:8080/x"), redact_url("bundled:details.json.gz")
    ('http://***@[::1]:8080/x', 'bundled:details.json.gz')
    >>> redact_url("https://onionoo.example/details?contact=a@b")
    'https://onionoo.example/details?contact=a@b'
    """
    parts: list[str] = []
    rest = url
    while (start := rest.find("://")) >= 0:
        start += 3
        end = start
        while end < len(rest) and rest[end] not in _AUTHORITY_END:
            end += 1
        authority = rest[start:end]
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        parts.append(rest[:start] + authority)
        rest = rest[end:]
    parts.append(rest)
    return "".join(parts)
