"""The service's own routes: providers, the queue's figures, health, Prometheus metrics
and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from genqueue.http.context import METRICS, OPENAPI, QUEUE, caller, json_response
from genqueue.http.errors import ApiError
from genqueue.http.metrics import CONTENT_TYPE

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/api/providers")
async def providers(request: web.Request) -> web.Response:
    caller(request)
    return json_response(request.app[QUEUE].providers())


@routes.get("/api/queue/status")
async def queue_status(request: web.Request) -> web.Response:
    caller(request)
    return json_response(await request.app[QUEUE].astatus())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    status = await request.app[QUEUE].astatus()
    body = request.app[METRICS].render(status)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    if not await request.app[QUEUE].ahealthy():
        raise ApiError(503, "the state store has failed", code="storage_unavailable")
    return json_response({"status": "ok"})


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
