"""Google's answers turned into ProviderErrors that mean what Google means.

HTTP errors follow google.rpc.Status (`{"error": {code, message, status, details[]}}`);
`details` may hold `google.rpc.RetryInfo` (`retryDelay: "37s"`) and `google.rpc.QuotaFailure`
(`violations[].quotaId`, e.g. `GenerateRequestsPerDayPerProjectPerModel`). An operation that
ended badly is `done` with an `error` (Vertex reports a blocked prompt as gRPC code 3 with a
support code in the message) or a response without videos whose `raiMediaFilteredReasons`
say why (the Gemini API). A block of the generated audio says "You have not been charged":
it is not deterministic, so it may be tried again (a bounded number of times).

Codes (ProviderError.code): auth, model_not_found, no_access, operation_not_found,
video_not_found, rate_limited, quota_exhausted, server_error, bad_request, http_error,
operation_error, prompt_blocked, safety_blocked, audio_blocked, no_video.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec

from genqueue.errors import ProviderError

__all__ = [
    "GoogleError",
    "google_error",
    "http_error",
    "is_per_day_quota",
    "operation_error",
    "retry_after_s",
    "unfinished_error",
]

_RETRYABLE_GRPC = (13, 14)  # INTERNAL, UNAVAILABLE
_NOT_CHARGED = "you have not been charged"


class GoogleError(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = []


class _ErrorBody(msgspec.Struct):
    error: GoogleError


_ERROR = msgspec.json.Decoder(_ErrorBody)


def google_error(body: bytes) -> GoogleError | None:
    try:
        return _ERROR.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _details_of(google: GoogleError | None, kind: str) -> list[dict[str, Any]]:
    if google is None:
        return []
    return [d for d in google.details if str(d.get("@type", "")).endswith(f"google.rpc.{kind}")]


def is_per_day_quota(google: GoogleError | None) -> bool:
    """A QuotaFailure whose violated quota counts per day (it will not lift in a minute)."""
    for detail in _details_of(google, "QuotaFailure"):
        for violation in detail.get("violations") or []:
            if not isinstance(violation, dict):
                continue
            text = " ".join(str(violation.get(k, "")) for k in ("quotaId", "description"))
            if "perday" in text.lower().replace(" ", "") or "per day" in text.lower():
                return True
    return False


def retry_after_s(headers: Mapping[str, str], google: GoogleError | None) -> float | None:
    """Seconds from the Retry-After header, else from Google's RetryInfo detail ("37s")."""
    candidates = [headers.get("Retry-After", "")]
    for detail in _details_of(google, "RetryInfo"):
        candidates.append(str(detail.get("retryDelay", "")).removesuffix("s"))
    for value in candidates:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    return None


def http_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    call: str,
    model: str,
    credential: str,
    quota_pause_s: float,
) -> ProviderError:
    google = google_error(body)
    detail = google.message if google and google.message else _snippet(body)
    reasons = {d.get("reason") for d in google.details} if google else set()
    if status in (401, 403) or (status == 400 and "API_KEY_INVALID" in reasons):
        return ProviderError(
            f"Veo refused the {credential} (HTTP {status}): {detail}",
            retryable=False,
            status=status,
            code="auth",
        )
    if status == 404:
        return _not_found(call, model, detail)
    if status == 429:
        if is_per_day_quota(google):
            return ProviderError(
                f"Veo's daily quota is exhausted (HTTP 429): {detail}",
                retryable=True,
                status=429,
                retry_after_s=quota_pause_s,
                code="quota_exhausted",
            )
        return ProviderError(
            f"Veo rate limit exceeded (HTTP 429): {detail}",
            retryable=True,
            status=429,
            retry_after_s=retry_after_s(headers, google),
            code="rate_limited",
        )
    if status >= 500 or status == 408:
        return ProviderError(
            f"Veo {call} failed with HTTP {status}: {detail}",
            retryable=True,
            status=status,
            code="server_error",
        )
    if status == 400 and google and google.message:
        return ProviderError(google.message, retryable=False, status=400, code="bad_request")
    return ProviderError(
        f"Veo {call} failed with HTTP {status}: {detail}",
        retryable=False,
        status=status,
        code="bad_request" if status == 400 else "http_error",
    )


def _not_found(call: str, model: str, detail: str) -> ProviderError:
    if call in ("start", "model"):
        low = detail.lower()
        if "access" in low and "not found for api version" not in low:
            # Vertex: "Publisher Model `…` was not found or your project does not have access
            # to it." Google does not say which; the message keeps both readings.
            message = (
                f"Veo model {model!r} is not served to these credentials (not found, or the "
                "project or key has no access to it: check VEO3_MODEL and the project's Veo "
                "access)"
            )
            return ProviderError(
                f"{message}: {detail}", retryable=False, status=404, code="no_access"
            )
        # Gemini: "models/… is not found for API version v1beta, or is not supported for
        # predictLongRunning": the door does not serve this id (unknown, retired, or Vertex-only).
        message = f"Veo does not serve the model {model!r} (HTTP 404)"
        return ProviderError(
            f"{message}: {detail}", retryable=False, status=404, code="model_not_found"
        )
    if call == "poll":
        message, code = "Veo operation not found (HTTP 404)", "operation_not_found"
    else:
        message, code = "the video was not found; Veo keeps it 2 days (HTTP 404)", "video_not_found"
    return ProviderError(f"{message}: {detail}", retryable=False, status=404, code=code)


def operation_error(error: GoogleError) -> ProviderError:
    """A finished operation's `error`."""
    text = error.message
    if _NOT_CHARGED in text.lower():
        return ProviderError(
            f"Veo blocked the generated audio (not charged; may pass on a new try): {text}",
            retryable=True,
            code="audio_blocked",
        )
    if error.code == 3:  # INVALID_ARGUMENT: Vertex's verdict on the prompt (a support code)
        return ProviderError(
            f"Veo refused the prompt (gRPC code 3): {text}", retryable=False, code="prompt_blocked"
        )
    return ProviderError(
        f"Veo operation failed (gRPC code {error.code}): {text}",
        retryable=error.code in _RETRYABLE_GRPC,
        code="operation_error",
    )


def unfinished_error(reasons: list[str], filtered_count: int) -> ProviderError:
    """A finished operation with no video: its filter reasons, if Google gave any."""
    text = "; ".join(reasons)
    if _NOT_CHARGED in text.lower():
        return ProviderError(
            f"Veo blocked the generated audio (not charged; may pass on a new try): {text}",
            retryable=True,
            code="audio_blocked",
        )
    if reasons or filtered_count:
        return ProviderError(
            f"Veo's safety filter blocked the video: {text or 'no reason given'}",
            retryable=False,
            code="safety_blocked",
        )
    return ProviderError(
        "Veo finished the operation without a video", retryable=False, code="no_video"
    )


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    if not text:
        return "empty body"
    return f"non-JSON body: {text[:limit]}{'…' if len(text) > limit else ''}"
