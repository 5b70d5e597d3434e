"""URLs as they may be shown: :func:`redact_url` hides the credentials a URL carries.

A URL may carry a user name and password before its host (``https://user:secret@host/path``, RFC 3986
section 3.2.1, "userinfo"). Whatever tor-sets prints, logs or writes shows such a URL only through
:func:`redact_url`.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

#: what stands in for the userinfo of a URL
REDACTED = "***"

# An optional scheme and "//", then the userinfo: everything up to the last "@" before the first "/", "?" or "#".
_USERINFO = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)?[^/?#]*@")


def redact_url(url: str) -> str:
    """``url`` with its userinfo replaced by ``***``; scheme, host, port, path, query and fragment as written.

    The authority is found the way ``urllib.parse`` and urllib3 find it (after ``SCHEME://``, up to the first
    ``/``, ``?`` or ``#``; the userinfo ends at its last ``@``). Text without ``//`` whose first ``/``, ``?`` or
    ``#`` comes after an ``@`` is treated the same way, so that a URL missing its scheme is not shown either.
    Never raises; text without such an ``@`` comes back unchanged.

    >>> redact_url("https://user:secret@example.org:8443/falco?x=1")
    'https://***@example.org:8443/falco?x=1'
    >>> redact_url("http://127.0.0.1:2802/a@b"), redact_url("user:pass@host:80"), redact_url("not a url")
    ('http://127.0.0.1:2802/a@b', '***@host:80', 'not a url')
    """
    return _USERINFO.sub(lambda m: f"{m[1] or ''}{REDACTED}@", url, count=1)
