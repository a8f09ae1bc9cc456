"""A local OAuth 2.0 token endpoint for service-account keys, and throwaway keys for it.

What google-auth does with a service-account key file (`GOOGLE_APPLICATION_CREDENTIALS`):
it signs a JWT (RS256, `iss` = the key's `client_email`, `aud` = Google's token endpoint,
`scope`, `iat`, `exp`) with the key's private key and POSTs it to the key's `token_uri` as
the JWT-bearer grant (RFC 7523: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&
assertion=...`); the answer is `{"access_token", "expires_in", "token_type": "Bearer"}`.
A TokenIssuer answers
that grant for the keys it made, issues short-lived opaque tokens, and tells the fake Veo
whether a bearer token is live, expired or unknown, on its own clock.

`cryptography` (a dependency of google-auth and moto) is imported only when a key is made
or a grant checked, so serving the fake without an issuer needs nothing more.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web

__all__ = ["JWT_BEARER", "ServiceAccountKey", "TokenIssuer"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class _Clock(Protocol):
    def now(self) -> float: ...


class _WallClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True)
class ServiceAccountKey:
    """A key file written by `TokenIssuer.new_key`: where it is and who it names."""

    path: Path
    client_email: str
    project_id: str


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenIssuer:
    """Issues access tokens for the service-account keys it made; `handle` is `POST /token`."""

    def __init__(self, *, lifetime_s: float = 3600.0, clock: _Clock | None = None):
        self.lifetime_s = lifetime_s
        self.clock: _Clock = clock or _WallClock()
        self._public_keys: dict[str, Any] = {}  # client_email -> RSA public key
        self._tokens: dict[str, float] = {}  # access token -> expiry (clock seconds)
        self.grants = 0  # tokens issued through the endpoint
        self.refused = 0  # grants refused

    def new_key(
        self,
        directory: Path,
        token_uri: str,
        project_id: str = "fake-project",
        *,
        path: Path | None = None,
    ) -> ServiceAccountKey:
        """Write a new service-account key file whose `token_uri` is `token_uri` (in
        `directory` under a name of its own, or at `path`)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"genqueue-test-{secrets.token_hex(4)}@{project_id}.iam.gserviceaccount.com"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        }
        path = path or directory / f"service-account-{email.split('@')[0]}.json"
        path.write_text(json.dumps(info, indent=2))
        path.chmod(0o600)
        self._public_keys[email] = key.public_key()
        return ServiceAccountKey(path, email, project_id)

    def issue(self, lifetime_s: float | None = None) -> str:
        """A new access token, live for `lifetime_s` (default: the issuer's) from now."""
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        life = self.lifetime_s if lifetime_s is None else lifetime_s
        self._tokens[token] = self.clock.now() + life
        return token

    def check(self, token: str) -> Literal["live", "expired", "unknown"]:
        """Whether `token` is one this issuer gave out, and still live."""
        expiry = self._tokens.get(token)
        if expiry is None:
            return "unknown"
        return "live" if self.clock.now() < expiry else "expired"

    def app(self) -> web.Application:
        """The token endpoint alone (`POST /token`), to serve apart from the fake Veo."""
        app = web.Application()
        app.router.add_post("/token", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """`POST /token`: the JWT-bearer grant of RFC 7523, as Google's endpoint answers it."""
        form = urllib.parse.parse_qs((await request.read()).decode("utf-8", "replace"))
        grant = form.get("grant_type", [""])[0]
        if grant != JWT_BEARER:
            return self._refuse("unsupported_grant_type", f"Invalid grant_type: {grant}")
        problem = self._verify(form.get("assertion", [""])[0], str(request.url))
        if problem is not None:
            return self._refuse("invalid_grant", problem)
        self.grants += 1
        token = self.issue()
        body = {"access_token": token, "expires_in": int(self.lifetime_s), "token_type": "Bearer"}
        return web.json_response(body)

    def _refuse(self, error: str, description: str) -> web.Response:
        self.refused += 1
        return web.json_response({"error": error, "error_description": description}, status=400)

    def _verify(self, assertion: str, url: str) -> str | None:
        """Why the assertion is refused, or None: signature, issuer, audience, expiry, scope."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, body, signature = assertion.split(".")
            header, claims = json.loads(_b64url_decode(head)), json.loads(_b64url_decode(body))
            key = self._public_keys.get(str(claims.get("iss")))
            if header.get("alg") != "RS256" or key is None:
                return "Invalid JWT: unknown signing key."
            key.verify(
                _b64url_decode(signature),
                f"{head}.{body}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return "Invalid JWT Signature."
        # google-auth signs for Google's endpoint whatever the key's token_uri says
        # (service_account.py: "aud": _GOOGLE_OAUTH2_TOKEN_ENDPOINT), as Google expects.
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, url):
            return f"Invalid JWT: audience {claims.get('aud')!r} is not this token endpoint."
        if not float(claims.get("iat", 0)) - 300 <= time.time() < float(claims.get("exp", 0)):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return "Invalid JWT: the scope must include cloud-platform."
        return None
