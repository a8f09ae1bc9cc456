"""The HTTP API on aiohttp: `create_app(config)` builds the application (see app.py);
`run_app(app, sock)` serves it, and `JsonErrorRunner` is the AppRunner both use (aiohttp's
own protocol errors in the API's JSON shape, see server.py)."""

from genqueue.http.app import EVENTS, MAX_BODY_BYTES, QUEUE, create_app
from genqueue.http.server import JsonErrorRunner, run_app

__all__ = ["EVENTS", "MAX_BODY_BYTES", "QUEUE", "JsonErrorRunner", "create_app", "run_app"]
