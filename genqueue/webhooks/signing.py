"""Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

The signed content is `f"{msg_id}.{timestamp_s}."` followed by the body bytes; each secret
gives one `v1,<base64 HMAC-SHA256>` and several secrets (a rotation) give several,
space-separated, so a receiver holding either secret accepts the message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = ["SECRET_PREFIX", "WebhookSigner", "parse_secrets"]

SECRET_PREFIX = "whsec_"
_SEPARATORS = re.compile(r"[\s,]+")


def parse_secrets(text: str) -> tuple[str, ...]:
    """Split a secrets setting (`"whsec_a whsec_b"` or `"whsec_a,whsec_b"`) into secrets."""
    return tuple(part for part in _SEPARATORS.split(text) if part)


def _decode_secret(secret: str, position: int) -> bytes:
    """The key bytes of one `whsec_` secret; errors name the problem, never the secret."""
    where = f"webhook secret #{position}"
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"{where} must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    if not encoded.rstrip("="):
        raise ValueError(f"{where} is empty after {SECRET_PREFIX!r}")
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not valid base64 after {SECRET_PREFIX!r}") from None
    return key


class WebhookSigner:
    """Signs webhook messages with one or more `whsec_…` secrets (the first is the newest)."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str]) -> None:
        if isinstance(secrets, str):
            secrets = (secrets,)
        if not secrets:
            raise ValueError("no webhook secret given")
        self._keys = tuple(_decode_secret(s, i) for i, s in enumerate(secrets, start=1))

    def __repr__(self) -> str:
        return f"WebhookSigner(<{len(self._keys)} secret(s)>)"

    def sign(self, msg_id: str, timestamp_s: int, body: bytes) -> str:
        """The `webhook-signature` value: `v1,<sig>` per secret, space-separated."""
        content = f"{msg_id}.{timestamp_s}.".encode() + body
        return " ".join(f"v1,{_hmac_b64(key, content)}" for key in self._keys)

    def headers(self, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
        """The request headers of one signed attempt."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": self.sign(msg_id, timestamp_s, body),
            "content-type": "application/json",
        }


def _hmac_b64(key: bytes, content: bytes) -> str:
    return base64.b64encode(hmac.digest(key, content, hashlib.sha256)).decode("ascii")
