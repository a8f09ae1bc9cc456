"""The HTTP API on aiohttp: `create_app(config)` builds the application (see app.py)."""

from genqueue.http.app import EVENTS, MAX_BODY_BYTES, QUEUE, create_app

__all__ = ["EVENTS", "MAX_BODY_BYTES", "QUEUE", "create_app"]
