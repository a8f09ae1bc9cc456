"""Who may call which door, and Google's answers when they may not.

- Gemini API: `x-goog-api-key` (a missing key is a 403 PERMISSION_DENIED, a wrong one a
  400 INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID, as Google answers a bad key).
- Vertex AI: `Authorization: Bearer TOKEN`. With a TokenIssuer, only a token it issued and
  that is still live passes (an expired one is a 401 with ErrorInfo ACCESS_TOKEN_EXPIRED, as
  Google answers a token past its hour); with a fixed `access_token`, only that one.
- Vertex express mode: a Vertex API key in `x-goog-api-key`, no project in the path.
- Downloads: either credential. Unset credentials let everyone through (the demo).
"""

from __future__ import annotations

from aiohttp import web

from genqueue.providers.fake_veo.google_errors import (
    BAD_KEY,
    BAD_TOKEN,
    EXPIRED_TOKEN,
    NO_CREDENTIALS,
    NO_KEY,
    google_error,
)
from genqueue.providers.fake_veo.oauth import TokenIssuer

__all__ = ["Credentials"]


class Credentials:
    """The credentials each door accepts; `refuse` answers a request that lacks them."""

    def __init__(
        self,
        api_key: str | None,
        access_token: str | None,
        vertex_api_key: str | None,
        token_issuer: TokenIssuer | None,
    ):
        self.api_key = api_key
        self.access_token = access_token
        self.vertex_api_key = vertex_api_key
        self.token_issuer = token_issuer

    def refuse(self, request: web.Request, door: str) -> web.Response | None:
        """None if `request` may use `door` ("gemini" | "vertex" | "express" | "any")."""
        if door == "gemini":
            return self._key(request, self.api_key)
        if door == "express":
            if self.vertex_api_key is not None and "x-goog-api-key" not in request.headers:
                return google_error(401, NO_CREDENTIALS, reason="CREDENTIALS_MISSING")
            return self._key(request, self.vertex_api_key)
        if door == "vertex":
            return self._bearer(request)
        # Downloads: the Gemini key or, failing that, the Vertex token.
        if self.api_key is None:
            return self._bearer(request)
        if self._key(request, self.api_key) is None:
            return None
        if self._vertex_configured() and self._bearer(request) is None:
            return None
        return self._key(request, self.api_key)

    def _vertex_configured(self) -> bool:
        return self.access_token is not None or self.token_issuer is not None

    @staticmethod
    def _key(request: web.Request, expected: str | None) -> web.Response | None:
        key = request.headers.get("x-goog-api-key")
        if expected is None or key == expected:
            return None
        if key is None:
            return google_error(403, NO_KEY)
        return google_error(400, BAD_KEY, reason="API_KEY_INVALID")

    def _bearer(self, request: web.Request) -> web.Response | None:
        if not self._vertex_configured():
            return None
        header = request.headers.get("Authorization", "")
        if not header:
            return google_error(401, NO_CREDENTIALS, reason="CREDENTIALS_MISSING")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return google_error(401, BAD_TOKEN, reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
        if self.access_token is not None and token == self.access_token:
            return None
        if self.token_issuer is not None:
            state = self.token_issuer.check(token)
            if state == "live":
                return None
            if state == "expired":
                return google_error(401, EXPIRED_TOKEN, reason="ACCESS_TOKEN_EXPIRED")
        return google_error(401, BAD_TOKEN, reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
