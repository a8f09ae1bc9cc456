"""One webhook attempt: POST a Delivery's body, signed, and classify what happened.

2xx is delivered; 410 Gone means the receiver wants no more (dead-letter at once); any
other status, a redirect (never followed), a timeout or a connection error is worth a retry.
Network problems never raise: they come back as a SendOutcome.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

from genqueue.webhooks.payload import Delivery
from genqueue.webhooks.signing import WebhookSigner

__all__ = ["SendOutcome", "attempt_headers", "send"]


class SendOutcome(msgspec.Struct, frozen=True):
    """What one attempt came to; `error` says why it failed, without the URL or secrets."""

    ok: bool
    status: int | None
    retryable: bool
    error: str | None
    duration_ms: float


async def send(
    session: aiohttp.ClientSession,
    url: str,
    delivery: Delivery,
    signer: WebhookSigner | None,
    *,
    now_s: float,
    timeout_s: float = 15.0,
) -> SendOutcome:
    """Make one attempt at `delivery`; `now_s` (the injected clock) dates this attempt.

    The session should not keep cookies (`cookie_jar=aiohttp.DummyCookieJar()`).
    """
    headers = attempt_headers(delivery, signer, int(now_s))
    started = time.perf_counter()
    try:
        status = await _post(session, url, delivery.body, headers, timeout_s)
    except TimeoutError:
        return _failed(started, f"timed out after {timeout_s:g} s", retryable=True)
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        return _failed(started, "invalid webhook URL", retryable=False)
    except aiohttp.ClientError as exc:
        return _failed(started, f"{type(exc).__name__}: {exc}", retryable=True)
    return _classify(status, _elapsed_ms(started))


def attempt_headers(
    delivery: Delivery, signer: WebhookSigner | None, timestamp_s: int
) -> dict[str, str]:
    """Headers of one attempt; unsigned (no `webhook-signature`) when there is no signer."""
    if signer is not None:
        return signer.headers(delivery.id, timestamp_s, delivery.body)
    return {
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp_s),
        "content-type": "application/json",
    }


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
) -> int:
    """POST and return the status; the response body is not read (the connection is dropped)."""
    async with session.post(
        url,
        data=body,
        headers=headers,
        allow_redirects=False,
        raise_for_status=False,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        return response.status


def _classify(status: int, duration_ms: float) -> SendOutcome:
    ok = 200 <= status < 300
    retryable = not ok and status != 410
    error: str | None = None
    if status == 410:
        error = "HTTP 410 Gone: the receiver asked for no more deliveries"
    elif 300 <= status < 400:
        error = f"HTTP {status} (redirects are not followed)"
    elif not ok:
        error = f"HTTP {status}"
    return SendOutcome(
        ok=ok, status=status, retryable=retryable, error=error, duration_ms=duration_ms
    )


def _failed(started: float, error: str, *, retryable: bool) -> SendOutcome:
    return SendOutcome(
        ok=False, status=None, retryable=retryable, error=error, duration_ms=_elapsed_ms(started)
    )


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
