"""URLs as tor-sets shows and stores them: never with the credentials a user put in them.

Exports :func:`redact_url`, the one function every place that writes or logs a URL passes it through (the rules
header, the refresh state, the download cache's metadata, error messages and warnings). A URL may carry a user
name and password (``https://reader:secret@mirror.example/details``, RFC 3986 section 3.2.1); the request still
uses them, nothing written does.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

#: ``scheme://`` then the userinfo: everything of the authority (which ends at ``/``, ``?``, ``#`` or a space) up to
#: its last ``@``, the way urllib3 and requests split it
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def redact_url(text: str) -> str:
    """``text`` with the userinfo (``user:password@``) of every URL in it replaced by ``***@``.

    Works on a URL alone and on a message that quotes URLs; anything else is returned unchanged.

    >>> redact_url("https://reader:s3cret@mirror.example/details?type=relay")
    'https://***@mirror.example/details?type=relay'
    >>> redact_url("HTTP 503 from http://u:p%40ss@127.0.0.1:8080/details; retrying")
    'HTTP 503 from http://***@127.0.0.1:8080/details; retrying'
    >>> redact_url("http://127.0.0.1:8080/details?contact=a@b.example")
    'http://127.0.0.1:8080/details?contact=a@b.example'
    >>> redact_url("/var/lib/tor-sets/details@2026.json")
    '/var/lib/tor-sets/details@2026.json'
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)
