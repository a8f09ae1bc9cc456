"""Webhook delivery, the stateless parts: payloads, Standard Webhooks signing and one signed
attempt. The durable outbox (WebhookActor) builds on these; its retry policy is
`Config.webhook_retry` (genqueue/retry.py)."""

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
from genqueue.webhooks.sender import SendOutcome, attempt_headers, send
from genqueue.webhooks.signing import WebhookSigner, parse_secrets
from genqueue.webhooks.stats import DeadLetters, WebhookStats

__all__ = [
    "DeadLetters",
    "Delivery",
    "DeliveryState",
    "EventName",
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
    "parse_secrets",
    "send",
]
