"""`Client` and `AsyncClient`: JobQueue's methods over the HTTP API (aiohttp).

A service moves from an embedded queue to a remote one by changing one line:

    queue = JobQueue(config, process).open()              # embedded
    queue = Client("http://127.0.0.1:8787", api_key)      # remote, same calls

They take and return the same models (`Job`, `JobPage`, `Submission`, `JobResult`,
`QueueStatus`, `ProviderList`, `WebhookStats`, `DeadLetters`, `Delivery`) and raise the
same errors (`InvalidRequest`, `JobNotFound`, `IllegalTransition`, `JobFailed`, `StorageError`,
`DeliveryNotFound`, `DeliveryNotDead`), plus `Unauthorized` for a refused key and
`Unreachable` when no server answers (and `StreamsFull` from `subscribe` past the key's
event streams). The API key decides the user, so `submit` takes no `user_id`, and
`list_jobs` shows the key's jobs (an admin key's: everyone's).
What the API does not show of a job (its checkpoint, generation id, sequence number)
keeps its default in the `Job` a client returns.

`AsyncClient` is for asyncio code (the `a`-methods, as on JobQueue; aio.py); `Client` is
the blocking one: it runs an `AsyncClient` on a private event loop thread (blocking.py).
What the server answers becomes models and errors in answers.py; `subscribe` follows
`GET /api/events` (feed.py says what it delivers, against JobQueue's every change).
"""

from genqueue.client.aio import AsyncClient, AsyncWebhooks
from genqueue.client.blocking import Client, Webhooks
from genqueue.client.feed import RECONNECT, StreamsFull, Subscription

__all__ = [
    "RECONNECT",
    "AsyncClient",
    "AsyncWebhooks",
    "Client",
    "StreamsFull",
    "Subscription",
    "Webhooks",
]
