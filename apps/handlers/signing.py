"""Webhook signatures: `X-TaskFlow-Signature: t=<unix seconds>,v1=<hex>`, where the hex is the
HMAC-SHA256, keyed with the type's signing secret, of `<t>.<request body>`.

Standard library only: `verify` is the code docs/handlers.md gives receivers to copy (a test checks
that the two stay the same), and the tests' receiving server uses it as it is.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-TaskFlow-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """True if `header` (X-TaskFlow-Signature) signs `body` with `secret`, made within
    `tolerance` seconds of now (an old request replayed is refused). False for any malformed
    header: it never raises."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
    except ValueError:  # an item without "="
        return False
    t = parts.get("t", "")
    if not (1 <= len(t) <= 12 and t.isascii() and t.isdigit()):  # not "-1", " 1", "²", 400 digits
        return False
    timestamp = int(t)
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    given = parts.get("v1", "").encode("utf-8", "replace")  # bytes: any text compares, unequal
    return hmac.compare_digest(expected.encode(), given)
