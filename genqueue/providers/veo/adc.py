"""Application Default Credentials through google-auth, refreshed off the event loop.

Its `refresh()` is a blocking HTTP call, so it runs in the loop's executor, and one refresh
serves every caller that needs a token meanwhile (single flight). When to refresh is
decided on the injected clock (see google_auth.py). Imported only when ADC is used: google-auth
brings requests and cryptography, most of what importing genqueue would otherwise cost.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
from google.auth import _helpers as google_auth_helpers
from google.oauth2 import service_account

from genqueue.clock import Clock, RealClock
from genqueue.errors import ProviderError
from genqueue.providers.veo.google_auth import SCOPES

__all__ = ["REFRESH_MARGIN_S", "BearerAuth", "load_adc"]

REFRESH_MARGIN_S = google_auth_helpers.REFRESH_THRESHOLD.total_seconds()


class BearerAuth:
    """google-auth credentials, refreshed off the loop, before they expire on `clock`."""

    refreshable = True

    def __init__(self, credentials: Any, *, clock: Clock | None = None):
        self.credentials = credentials
        self.clock: Clock = clock or RealClock()
        self.refreshes = 0
        self._token: str | None = None
        self._use_until = -math.inf
        self._refresh: asyncio.Future[str] | None = None
        self._request = google.auth.transport.requests.Request()

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        if self._token is not None and self.clock.now() < self._use_until:
            return self._token
        if self._refresh is None:  # the first caller starts the one refresh; others wait on it
            self._refresh = asyncio.ensure_future(self._refreshed())
        return await asyncio.shield(self._refresh)

    def rejected(self, headers: dict[str, str]) -> None:
        if headers.get("Authorization") == f"Bearer {self._token}":
            self._token = None

    def secrets(self) -> list[str]:
        return [self._token] if self._token else []

    async def _refreshed(self) -> str:
        try:
            loop = asyncio.get_running_loop()
            token, lifetime_s = await loop.run_in_executor(None, self._refresh_blocking)
        finally:
            self._refresh = None
        margin_s = min(REFRESH_MARGIN_S, lifetime_s / 2)
        self._token, self._use_until = token, self.clock.now() + lifetime_s - margin_s
        self.refreshes += 1
        return token

    def _refresh_blocking(self) -> tuple[str, float]:
        """In the executor: google-auth's blocking refresh; the token and its lifetime."""
        try:
            self.credentials.refresh(self._request)
        except google.auth.exceptions.TransportError as exc:
            raise ProviderError(
                f"could not reach Google's token endpoint: {exc}", retryable=True, code="auth"
            ) from None
        except google.auth.exceptions.GoogleAuthError as exc:
            raise ProviderError(
                f"Google refused to issue an access token: {exc}", retryable=False, code="auth"
            ) from None
        expiry = self.credentials.expiry
        lifetime_s = math.inf
        if expiry is not None:
            lifetime_s = max(0.0, (expiry - google_auth_helpers.utcnow()).total_seconds())
        return str(self.credentials.token), lifetime_s


def _from_file(path: str) -> Any:
    """A service-account key or gcloud user credentials, loaded by their own type's loader
    (google-auth deprecates the any-type `load_credentials_from_file` for files from
    elsewhere: a file of another type is refused here, never run)."""
    with open(path) as f:
        info = json.load(f)
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
    if kind == "authorized_user":
        return google.oauth2.credentials.Credentials.from_authorized_user_info(
            info, scopes=list(SCOPES)
        )
    raise ValueError(f"{path}: credentials of type {kind!r} are not supported")


def load_adc(credentials_file: str | None, *, clock: Clock | None = None) -> BearerAuth:
    """Credentials from the key file given, else ADC's search (gcloud, then the metadata
    server). Blocking (it may read files and probe the metadata server): call it in an
    executor. ConfigError-like failures come back as a non-retryable ProviderError."""
    try:
        if credentials_file:
            credentials = _from_file(credentials_file)
        else:
            credentials, _ = google.auth.default(scopes=list(SCOPES))
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise ProviderError(
            f"no Google credentials for Vertex (GOOGLE_APPLICATION_CREDENTIALS, gcloud auth "
            f"application-default login, or the metadata server): {exc}",
            retryable=False,
            code="auth",
        ) from None
    return BearerAuth(credentials, clock=clock)
