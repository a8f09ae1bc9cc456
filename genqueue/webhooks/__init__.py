"""Webhook delivery, the stateless parts: payloads, Standard Webhooks signing, the retry
schedule and one signed attempt. The durable outbox (WebhookActor) builds on these."""

from genqueue.webhooks.payload import (
    Delivery,
    DeliveryState,
    EventName,
    WebhookEvent,
    WebhookResult,
    delivery_id,
    encode_event,
    iso_timestamp,
    new_delivery,
)
from genqueue.webhooks.schedule import DEFAULT_DELAYS_S, RetrySchedule, parse_retry_s
from genqueue.webhooks.sender import SendOutcome, attempt_headers, send
from genqueue.webhooks.signing import WebhookSigner, parse_secrets
from genqueue.webhooks.stats import DeadLetters, WebhookStats

__all__ = [
    "DEFAULT_DELAYS_S",
    "DeadLetters",
    "Delivery",
    "DeliveryState",
    "EventName",
    "RetrySchedule",
    "SendOutcome",
    "WebhookEvent",
    "WebhookResult",
    "WebhookSigner",
    "WebhookStats",
    "attempt_headers",
    "delivery_id",
    "encode_event",
    "iso_timestamp",
    "new_delivery",
    "parse_retry_s",
    "parse_secrets",
    "send",
]
