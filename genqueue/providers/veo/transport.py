"""Veo's HTTP with credentials: where they may go, and what a failure may say.

Credentials go only to the API's origin (and, for `gs://` results, to Cloud Storage's JSON
API), redirects included: a download follows them by hand. A 401 with refreshable
credentials (ADC) refreshes them and tries the call once more. Transport failures become
ProviderErrors (a paid call's lost answer is `ambiguous_start`), and no message ever shows
a key or a token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from genqueue.errors import ProviderError
from genqueue.providers.veo import failures
from genqueue.providers.veo.google_auth import ApiKeyAuth, Auth

__all__ = ["MAX_REDIRECTS", "VeoHttp"]

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_ENCODER = msgspec.json.Encoder()


class VeoHttp:
    """Calls and downloads over one aiohttp session, with the door's credentials."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        gcs_base_url: str,
        auth: Auth | None,
        request_timeout_s: float,
        quota_pause_s: float,
    ):
        self._session = session
        self._origins = (_origin(URL(base_url)), _origin(URL(gcs_base_url)))
        self.auth = auth
        self._timeout_s = request_timeout_s
        self._quota_pause_s = quota_pause_s
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout_s, sock_read=request_timeout_s
        )

    async def call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        call: str,
        model: str,
        timeout: aiohttp.ClientTimeout,
    ) -> bytes:
        """The answer's body; a ProviderError for a status of 300 or more."""
        data = None if body is None else _ENCODER.encode(body)
        for attempt in (1, 2):
            auth = await self._auth_headers()
            headers = dict(auth)
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self._session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                if resp.status == 401 and attempt == 1 and self._refreshable:
                    assert self.auth is not None
                    self.auth.rejected(auth)
                    continue
                if resp.status >= 300:
                    raise self._error(resp.status, payload, resp.headers, call, model)
                return payload
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def follow(self, url: URL, model: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following redirects by hand so credentials never leave our origins."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._session.get(
                url,
                headers=await self._headers_for(url),
                allow_redirects=False,
                timeout=self._stream_timeout,
            )
            if resp.status in _REDIRECTS:
                url = _next_hop(url, resp)
                continue
            try:
                if resp.status >= 300:
                    body = await resp.content.read(65536)
                    raise self._error(resp.status, body, resp.headers, "download", model)
                yield resp
            finally:
                resp.release()
            return
        raise ProviderError(
            f"the video download was redirected more than {MAX_REDIRECTS} times",
            retryable=False,
            code="too_many_redirects",
        )

    @contextlib.contextmanager
    def guard(self, call: str, *, paid: bool = False) -> Iterator[None]:
        """Turn transport failures into ProviderErrors and strip secrets from every message.
        On a paid call, a failure after the request may have been sent is ambiguous."""
        try:
            yield
        except ProviderError as exc:
            clean = self._redact(exc)
            if clean is exc:
                raise
            raise clean from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Never connected: nothing was sent, so nothing was started.
            message = self._scrub(f"Veo {call}: cannot connect ({type(exc).__name__}: {exc})")
            raise ProviderError(message, retryable=True, code="connection") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._lost(call, exc, paid) from None

    def _lost(self, call: str, exc: BaseException, paid: bool) -> ProviderError:
        """A failure after the request may have left."""
        if paid:
            return ProviderError(
                f"Veo start: the answer was lost after the request was sent "
                f"({type(exc).__name__}); Veo may have started (and charged for) it",
                retryable=False,
                code="ambiguous_start",
            )
        if isinstance(exc, TimeoutError):
            return ProviderError(
                f"Veo {call} timed out after {self._timeout_s:g} s",
                retryable=True,
                code="timeout",
            )
        if isinstance(exc, aiohttp.ClientPayloadError):
            return ProviderError(
                f"Veo {call}: the connection was cut before the body ended",
                retryable=True,
                code="connection_cut",
            )
        message = self._scrub(f"Veo {call}: connection failed ({type(exc).__name__}: {exc})")
        return ProviderError(message, retryable=True, code="connection")

    def _error(
        self, status: int, body: bytes, headers: Any, call: str, model: str
    ) -> ProviderError:
        return failures.http_error(
            status,
            body,
            headers,
            call=call,
            model=model,
            credential=self._credential,
            quota_pause_s=self._quota_pause_s,
        )

    async def _headers_for(self, url: URL) -> dict[str, str]:
        if _origin(url) in self._origins:
            return await self._auth_headers()
        return {}

    async def _auth_headers(self) -> dict[str, str]:
        return await self.auth.headers() if self.auth is not None else {}

    @property
    def _refreshable(self) -> bool:
        return self.auth is not None and self.auth.refreshable

    @property
    def _credential(self) -> str:
        return "API key" if isinstance(self.auth, ApiKeyAuth) else "access token"

    def _scrub(self, text: str) -> str:
        for secret in self.auth.secrets() if self.auth is not None else []:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _redact(self, exc: ProviderError) -> ProviderError:
        message = self._scrub(exc.message)
        if message == exc.message:
            return exc
        return ProviderError(
            message,
            retryable=exc.retryable,
            status=exc.status,
            retry_after_s=exc.retry_after_s,
            code=exc.code,
        )


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    """Scheme, host and port (the default one when implicit): where credentials may go."""
    return url.scheme, url.host, url.port


def _next_hop(url: URL, resp: aiohttp.ClientResponse) -> URL:
    location = resp.headers.get("Location")
    resp.release()
    if not location:
        raise ProviderError(
            f"the video download answered HTTP {resp.status} without a Location",
            retryable=True,
            status=resp.status,
            code="bad_redirect",
        )
    target = url.join(URL(location))
    if target.scheme not in ("http", "https"):
        raise ProviderError(
            f"the video download redirected to a {target.scheme!r} URL",
            retryable=False,
            code="bad_redirect",
        )
    return target
