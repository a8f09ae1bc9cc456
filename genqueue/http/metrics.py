"""`GET /metrics`: the queue status figures in the Prometheus text format (prometheus-client).

Each app has its own `CollectorRegistry`, so two servers in one process (tests, an
embedding program) never share or clash. `QueueCollector` turns the latest
`QueueStatus` into metric families: the handler fetches the status from the queue
actor (without blocking the loop) and renders in the same loop turn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from genqueue import QueueStatus

__all__ = ["CONTENT_TYPE", "Metrics", "QueueCollector"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
P = "genqueue_"

# QueueStatus field -> (metric name, help) for plain gauges; None becomes NaN.
_GAUGES: dict[str, tuple[str, str]] = {
    "queued": ("jobs_queued", "Jobs waiting to start."),
    "in_flight": ("jobs_in_flight", "Jobs being processed now."),
    "retry_wait": ("jobs_retry_wait", "Jobs waiting for a retry backoff to end."),
    "max_concurrency": ("max_concurrency", "Configured maximum of jobs in flight."),
    "oldest_wait_s": ("oldest_wait_seconds", "How long the oldest queued job has waited."),
    "avg_wait_s": ("wait_seconds_avg", "Average queue wait of recent jobs."),
    "p95_wait_s": ("wait_seconds_p95", "95th percentile queue wait of recent jobs."),
    "avg_processing_s": ("processing_seconds_avg", "Average processing time of recent jobs."),
    "p95_processing_s": ("processing_seconds_p95", "95th percentile processing time."),
    "processed_per_minute": ("jobs_processed_per_minute", "Jobs completed in the last minute."),
    "failed_per_minute": ("jobs_failed_per_minute", "Jobs failed in the last minute."),
    "success_rate": ("success_rate", "Completed / (completed + failed)."),
    "failure_rate": ("failure_rate", "Failed / (completed + failed)."),
    "retry_rate": ("retry_rate", "Retries / all attempts that ended."),
}
_COUNTERS: dict[str, tuple[str, str]] = {
    "submitted": ("jobs_submitted", "Jobs accepted."),
    "retried": ("jobs_retried", "Attempts that ended in a retry."),
    "rate_limit_hits": ("rate_limit_hits", "Times the provider's rate limit paused dispatch."),
    "quota_pauses": ("quota_pauses", "Times the provider's daily quota paused dispatch."),
}
_FINISHED = ("completed", "failed", "cancelled")
# QueueStatus.webhooks key -> (metric name, help): the outbox's persisted counters ...
_WEBHOOK_COUNTERS: dict[str, tuple[str, str]] = {
    "sent": ("webhooks_sent", "Webhook deliveries the receiver accepted (2xx)."),
    "failedAttempts": ("webhooks_failed_attempts", "Webhook attempts that failed."),
    "retries": ("webhooks_retries", "Webhook deliveries scheduled for another attempt."),
    "dead": ("webhooks_dead", "Webhook deliveries dead-lettered."),
}
# ... and its current state (None becomes NaN).
_WEBHOOK_GAUGES: dict[str, tuple[str, str]] = {
    "pending": ("webhooks_pending", "Webhook deliveries waiting to be sent or retried."),
    "inFlight": ("webhooks_in_flight", "Webhook attempts under way now."),
    "deadLetters": ("webhooks_dead_letters", "Dead-lettered deliveries kept (not replayed)."),
    "oldestPendingAgeS": (
        "webhooks_oldest_pending_age_seconds",
        "Age of the oldest pending webhook delivery.",
    ),
}
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _snake(name: str) -> str:
    return _SNAKE.sub("_", name).strip("_").lower()


class QueueCollector(Collector):
    """Metric families for the last `QueueStatus` it was given."""

    def __init__(self) -> None:
        self.status: QueueStatus | None = None

    def collect(self) -> Iterator[Metric]:
        st = self.status
        if st is None:
            return
        info = GaugeMetricFamily(P + "dispatch_info", "Dispatch mode.", labels=["dispatch"])
        info.add_metric([st.dispatch], 1)
        yield info
        for field, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(P + name, doc, value=_num(getattr(st, field)))
        by_priority = GaugeMetricFamily(
            P + "jobs_queued_by_priority", "Queued jobs by priority.", labels=["priority"]
        )
        for priority, count in st.queued_by_priority.items():
            by_priority.add_metric([priority], count)
        yield by_priority
        for field, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(P + name, doc, value=getattr(st, field))
        finished = CounterMetricFamily(
            P + "jobs_finished", "Jobs that ended, by outcome.", labels=["status"]
        )
        for status in _FINISHED:
            finished.add_metric([status], getattr(st, status))
        yield finished
        yield GaugeMetricFamily(
            P + "dispatch_paused",
            "1 while the provider's rate limit pauses dispatch.",
            value=0 if st.paused_until is None else 1,
        )
        yield from _numbers(P + "provider_", st.provider, "Provider figure")
        yield from _spend(st.spend)
        yield from _webhooks(st.webhooks)
        if st.cluster is not None:
            yield from _cluster(st.cluster)


def _spend(values: Mapping[str, Any]) -> Iterator[Metric]:
    """What the jobs' paid starts cost (the prices' unit), by provider; and in flight."""
    spend = CounterMetricFamily(
        P + "spend",
        "Spend on video generation (paid starts x seconds x price).",
        labels=["provider"],
    )
    for provider, value in (values.get("byProvider") or {}).items():
        spend.add_metric([str(provider)], _num(value))
    yield spend
    yield GaugeMetricFamily(
        P + "spend_in_flight",
        "One paid start's price of every job not ended.",
        value=_num(values.get("inFlight", 0.0)),
    )


def _cluster(values: Mapping[str, Any]) -> Iterator[Metric]:
    """`dispatch = "sqs"`: a gauge per worker figure (labelled by worker), the SQS depths
    and the coordinator's counters."""
    workers = values.get("workers", [])
    for key, name, doc in (
        ("concurrency", "worker_concurrency", "Slots of a worker."),
        ("inFlight", "worker_in_flight", "Jobs a worker holds."),
        ("lastHeartbeatAgoS", "worker_last_heartbeat_age_seconds", "Since a worker's heartbeat."),
        ("sqsRequests", "worker_sqs_requests", "SQS requests a worker made."),
    ):
        family = GaugeMetricFamily(P + "cluster_" + name, doc, labels=["worker", "host"])
        for w in workers:
            family.add_metric([str(w["id"]), str(w["host"])], _num(w[key]))
        yield family
    rest = {k: v for k, v in values.items() if k != "workers"}
    yield from _numbers(P + "cluster_", rest, "Cluster figure")


def _webhooks(values: Mapping[str, Any]) -> Iterator[Metric]:
    """The outbox's figures with their types and units; unknown numbers as plain gauges."""
    for key, (name, doc) in _WEBHOOK_COUNTERS.items():
        if key in values:
            yield CounterMetricFamily(P + name, doc, value=_num(values[key]))
    for key, (name, doc) in _WEBHOOK_GAUGES.items():
        if key in values:
            yield GaugeMetricFamily(P + name, doc, value=_num(values[key]))
    known = _WEBHOOK_COUNTERS.keys() | _WEBHOOK_GAUGES.keys()
    rest = {k: v for k, v in values.items() if k not in known}
    yield from _numbers(P + "webhooks_", rest, "Webhook figure")


def _numbers(prefix: str, values: Mapping[str, Any], doc: str) -> Iterator[Metric]:
    """Every number in a free-form figures dict (nested dicts flattened) as a gauge."""
    for key, value in values.items():
        name = prefix + _snake(str(key))
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)):
            yield GaugeMetricFamily(name, f"{doc}: {key}.", value=float(value))
        elif isinstance(value, Mapping):
            yield from _numbers(name + "_", value, doc)


class Metrics:
    """This app's registry: the queue figures and a count of HTTP responses."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.queue = QueueCollector()
        self.registry.register(self.queue)
        self.http_responses = Counter(
            P + "http_responses",
            "HTTP responses by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def render(self, status: QueueStatus) -> bytes:
        self.queue.status = status
        return generate_latest(self.registry)
