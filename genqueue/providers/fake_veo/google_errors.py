"""Google's error answers, as the fake sends them: `{"error": {code, message, status, details}}`.

The shape is google.rpc.Status in JSON (https://cloud.google.com/apis/design/errors): the
HTTP status, the canonical code's name in `status`, and typed `details` (`ErrorInfo`,
`RetryInfo`, `QuotaFailure`). The two kinds of 429 differ as Google's do:
- a per-minute limit carries `RetryInfo` (and a `Retry-After` header): wait and try again;
- a per-day quota carries a `QuotaFailure` naming a per-day quota and no `RetryInfo`:
  trying again before the day turns only burns requests.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = [
    "BAD_KEY",
    "BAD_TOKEN",
    "EXPIRED_TOKEN",
    "NO_CREDENTIALS",
    "NO_KEY",
    "google_error",
    "quota_error",
]

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
BAD_KEY = "API key not valid. Please pass a valid API key."
NO_KEY = "Method doesn't allow unregistered callers. Please use an API key."
BAD_TOKEN = "Request had invalid authentication credentials. Expected OAuth 2 access token."
EXPIRED_TOKEN = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
NO_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential."
)
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"

# What each door says when a quota runs out, and the quota it names (per door, per window).
_QUOTA_MESSAGES = {
    "gemini": (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    ),
    "vertex": (
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
        "with base model: veo. Please submit a quota increase request. "
        "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai."
    ),
}
_QUOTA_IDS = {
    ("gemini", "minute"): (
        "generativelanguage.googleapis.com/generate_requests_per_model",
        "GenerateRequestsPerMinutePerProjectPerModel",
    ),
    ("gemini", "day"): (
        "generativelanguage.googleapis.com/generate_requests_per_model_per_day",
        "GenerateRequestsPerDayPerProjectPerModel",
    ),
    ("vertex", "minute"): (
        "aiplatform.googleapis.com/online_prediction_requests_per_base_model",
        "OnlinePredictionRequestsPerMinutePerProjectPerBaseModel",
    ),
    ("vertex", "day"): (
        "aiplatform.googleapis.com/online_prediction_requests_per_base_model_per_day",
        "OnlinePredictionRequestsPerDayPerProjectPerBaseModel",
    ),
}


def google_error(
    status: int,
    message: str,
    *,
    retry_after_s: float | None = None,
    reason: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> web.Response:
    """An error answer in Google's shape; `retry_after_s` adds RetryInfo and Retry-After."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    found = list(details or [])
    if reason:
        found.append({"@type": _ERROR_INFO, "reason": reason, "domain": "googleapis.com"})
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
        found.append({"@type": _RETRY_INFO, "retryDelay": f"{retry_after_s:g}s"})
    if found:
        error["details"] = found
    return web.json_response({"error": error}, status=status, headers=headers)


def quota_error(door: str, window: str, model: str, retry_after_s: float | None) -> web.Response:
    """A 429 for the `window` ("minute" | "day") quota of `door`, as Google words it.

    Only the per-minute kind tells when to come back (`RetryInfo`); the per-day kind names
    its quota in a `QuotaFailure` and says nothing of when.
    """
    metric, quota_id = _QUOTA_IDS[(door, window)]
    violation = {
        "quotaMetric": metric,
        "quotaId": quota_id,
        "quotaDimensions": {"model": model, "location": "global"},
    }
    details = [{"@type": _QUOTA_FAILURE, "violations": [violation]}]
    if window == "day":
        retry_after_s = None
    return google_error(429, _QUOTA_MESSAGES[door], retry_after_s=retry_after_s, details=details)
