"""The webhook outbox: events recorded in the job's turn, sent, retried and dead-lettered
by the singleton WebhookActor (see actor.py)."""

from genqueue.actors.webhook.actor import WebhookActor
from genqueue.actors.webhook.courier import WebhookClient
from genqueue.actors.webhook.events import build_delivery, event_seq, record_event
from genqueue.actors.webhook.messages import (
    KEY,
    KIND,
    MAX_IN_FLIGHT,
    TERMINAL_SEQ,
    Fresh,
    GetWebhookStats,
    PageDead,
    Replay,
    Sent,
    Wake,
)
from genqueue.actors.webhook.outbox import WebhookOutbox

__all__ = [
    "KEY",
    "KIND",
    "MAX_IN_FLIGHT",
    "TERMINAL_SEQ",
    "Fresh",
    "GetWebhookStats",
    "PageDead",
    "Replay",
    "Sent",
    "Wake",
    "WebhookActor",
    "WebhookClient",
    "WebhookOutbox",
    "build_delivery",
    "event_seq",
    "record_event",
]
