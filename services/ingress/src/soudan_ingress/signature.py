"""``X-Line-Signature``: HMAC-SHA256 of the raw request body with the channel secret, base64."""

from __future__ import annotations

import base64
import hashlib
import hmac


def line_signature(secret: bytes, body: bytes) -> bytes:
    """The signature LINE sends for ``body`` (base64, as bytes)."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest())


def signature_matches(secret: bytes, body: bytes, signature: str) -> bool:
    """Constant-time comparison of ``signature`` with the one computed over the raw ``body``."""
    # surrogateescape: a header with undecodable bytes simply does not match, it never raises.
    given = signature.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(line_signature(secret, body), given)
