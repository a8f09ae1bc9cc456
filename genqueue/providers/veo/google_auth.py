"""Credentials for Veo calls: an API key, a fixed token, or Application Default Credentials
(adc.py: google-auth, with requests and cryptography, is imported only when ADC is used).

ADC comes from `google-auth` (a service-account key file whose `token_uri` is honoured,
gcloud's user credentials, or the metadata server on Google Cloud). Its `refresh()` is a
blocking HTTP call, so it runs in the loop's executor, and one refresh serves every caller
that needs a token meanwhile (single flight).

When to refresh (adc.py) is decided on the injected clock, not by google-auth's `expired`
(which reads the real time through `google.auth._helpers.utcnow()`): right after a refresh
the token's lifetime is `credentials.expiry - utcnow()` (google-auth sets `expiry = utcnow()
+ expires_in`), and the token is used until `margin` before that lifetime has passed on our
clock. google-auth's own margin is `REFRESH_THRESHOLD` (3 min 45 s); a token that lives
less than twice that is refreshed at half its life. A 401 drops the token so that the next
call refreshes it, once (the client retries the call once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from genqueue.clock import Clock

if TYPE_CHECKING:
    from genqueue.providers.veo.adc import BearerAuth

__all__ = [
    "SCOPES",
    "ApiKeyAuth",
    "Auth",
    "FixedTokenAuth",
    "load_adc",
]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class Auth(Protocol):
    """What a Veo request carries to prove who calls."""

    @property
    def refreshable(self) -> bool: ...

    async def headers(self) -> dict[str, str]: ...

    def rejected(self, headers: dict[str, str]) -> None:
        """The API answered 401 to these headers: get new credentials before the next call."""

    def secrets(self) -> list[str]: ...


class ApiKeyAuth:
    """`x-goog-api-key` (the Gemini API, and Vertex AI express mode)."""

    refreshable = False

    def __init__(self, key: str):
        self._key = key

    async def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key}

    def rejected(self, headers: dict[str, str]) -> None:
        pass

    def secrets(self) -> list[str]:
        return [self._key]


class FixedTokenAuth:
    """A bearer token given as is (VERTEX_ACCESS_TOKEN): never refreshed."""

    refreshable = False

    def __init__(self, token: str):
        self._token = token

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def rejected(self, headers: dict[str, str]) -> None:
        pass

    def secrets(self) -> list[str]:
        return [self._token]


def load_adc(credentials_file: str | None, *, clock: Clock | None = None) -> BearerAuth:
    """Credentials from the key file given, else ADC's search (adc.py). Blocking: call it in
    an executor."""
    from genqueue.providers.veo import adc  # google-auth loads here, only for ADC

    return adc.load_adc(credentials_file, clock=clock)
