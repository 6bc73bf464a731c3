"""Masking credentials in text that leaves the process (errors, logs, alerts, state messages).

No imports from the package, so every module can use it.
"""

from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]+):[^\s@/]*@")
_KEY_VALUE_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)"
    r"(?P<quote>['\"]?)[^\s'\"&;,]+(?P=quote)",
    re.IGNORECASE,
)


def scrub_secrets(text: str) -> str:
    """Mask credentials in URLs and ``password=...``-style pairs."""
    text = _URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    return _KEY_VALUE_SECRET.sub(r"\g<key>\g<quote>***\g<quote>", text)
