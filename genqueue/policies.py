"""The retry policies genqueue's settings mean: each built from its Config keys.

`Config.job_retry`, `Config.provider_retry` and `Config.webhook_retry` call these; Config
builds each once at load, so a bad value stops the start naming its key. The one retry not
configured is a durable actor's alarm (`ALARM_RETRY`, genqueue/actors/runtime.py).
"""

from __future__ import annotations

import math

from genqueue.retry import RetryPolicy

__all__ = ["WEBHOOK_JITTER", "job_retry", "parse_delays_s", "provider_retry", "webhook_retry"]

WEBHOOK_JITTER = 0.1  # a webhook's waits move by up to 10% (Svix's), so retries spread out


def job_retry(max_attempts: int, retry_backoff_s: float) -> RetryPolicy:
    """A job's attempts: `max_attempts` in all (0 counts as 1), `retry_backoff_s` before the
    second, each next wait twice the last (no cap)."""
    return RetryPolicy(
        initial_interval_s=retry_backoff_s,
        backoff_coefficient=2.0,
        maximum_interval_s=math.inf,
        maximum_attempts=max(1, max_attempts),
    )


def provider_retry(max_retries: int) -> RetryPolicy:
    """A provider call (start, poll, download) that failed transiently, and the operations
    one attempt may start: `max_retries` more tries, 1 s, 2 s, 4 s ... at most 60 s apart
    (a Retry-After the provider gives wins: genqueue/actors/provider_calls.py)."""
    return RetryPolicy(
        initial_interval_s=1.0,
        backoff_coefficient=2.0,
        maximum_interval_s=60.0,
        maximum_attempts=max_retries + 1,
    )


def webhook_retry(webhook_retry_s: str) -> RetryPolicy:
    """A webhook delivery: GENQUEUE_WEBHOOK_RETRY_S, the delays before each attempt (one
    attempt each), each moved by up to 10%. The first delay, before the first attempt, is
    not waited: an event goes out at once."""
    delays_s = parse_delays_s(webhook_retry_s)
    return RetryPolicy.schedule(delays_s[1:], jitter=WEBHOOK_JITTER)


def parse_delays_s(text: str) -> tuple[float, ...]:
    """Seconds from `"0,5,300"` (fractions allowed); ValueError names the bad item."""
    return tuple(_parse_delay(item.strip(), n) for n, item in enumerate(text.split(","), 1))


def _parse_delay(item: str, position: int) -> float:
    if not item:
        raise ValueError(f"retry delay #{position} is empty (expected e.g. '0,5,300')")
    try:
        delay = float(item)
    except ValueError:
        raise ValueError(f"retry delay #{position} {item!r} is not a number of seconds") from None
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"retry delay #{position} {item!r} must be finite and >= 0 seconds")
    return delay
