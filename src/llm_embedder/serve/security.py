"""Bearer API-key check, in constant time (hmac.compare_digest), so a wrong key leaks nothing through timing."""

from __future__ import annotations

import hmac


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(expected: str | None, authorization: str | None) -> bool:
    """True when no key is configured, or the header carries exactly the configured key."""
    if not expected:
        return True
    token = bearer_token(authorization)
    # compare_digest on bytes of possibly different lengths is still constant-time in the contents
    return hmac.compare_digest((token or "").encode("utf-8"), expected.encode("utf-8"))
