"""The response side of a Veo call: a start's operation name, and what a poll says.

A start's 2xx answer that cannot be read is `ambiguous_start` (Google accepted the start,
so it is never sent again blindly); a finished operation is its videos, or the
ProviderError its error or its filter reasons mean (failures.py).
"""

from __future__ import annotations

import re

from genqueue.errors import ProviderError
from genqueue.providers.answers import decode_answer
from genqueue.providers.veo import failures
from genqueue.providers.veo.shapes import OPERATION, STARTED, Operation, OpResponse

__all__ = ["check_operation_name", "model_of", "operation_of", "started_name"]

_OPERATION = re.compile(
    r"^(?:projects/[^/?#]+/locations/[^/?#]+/)?(?:publishers/google/)?models/[^/?#]+"
    r"/operations/[^/?#]+$"
)


def check_operation_name(name: str) -> None:
    """ProviderError for what is not a Veo operation name (never put into a URL)."""
    if not _OPERATION.fullmatch(name):
        raise ProviderError(f"not a Veo operation name: {name[:200]!r}", retryable=False)


def model_of(name: str) -> str | None:
    """The model an operation name belongs to, if it names one."""
    before, found, _ = name.partition("/operations/")
    return before.rsplit("models/", 1)[-1] if found and "models/" in before else None


def started_name(payload: bytes) -> str:
    """The operation name of a start Veo accepted (HTTP 2xx)."""
    try:
        return decode_answer(STARTED, payload, "Veo start").name
    except ProviderError as exc:
        raise ProviderError(
            f"Veo accepted the start (HTTP 2xx) but its answer could not be read "
            f"({exc.message}); Veo may have started (and charged for) it",
            retryable=False,
            code="ambiguous_start",
        ) from None


def operation_of(payload: bytes, name: str) -> Operation:
    """A poll's answer: running, finished with videos, or the ProviderError it means."""
    raw = decode_answer(OPERATION, payload, "Veo poll")
    name = raw.name or name
    if not raw.done:
        return Operation(name=name, done=False)
    if raw.error is not None:
        raise failures.operation_error(raw.error)
    response = raw.response or OpResponse()
    videos = response.video_refs()
    if not videos:
        reasons, count = response.filter_reasons()
        raise failures.unfinished_error(reasons, count)
    return Operation(name=name, done=True, videos=videos)
