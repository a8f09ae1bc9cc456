"""The admin-only routes: the webhook outbox's dead letters and their replay."""

from __future__ import annotations

from aiohttp import web

from genqueue import DEAD_CURSOR, DELIVERY_ID, DeliveryNotDead, DeliveryNotFound
from genqueue.http.context import (
    QUEUE,
    json_response,
    query_cursor,
    query_limit,
    require_admin,
)
from genqueue.http.errors import ApiError
from genqueue.wire import DeliveryPage, public_delivery

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/api/webhooks/dead")
async def dead_webhooks(request: web.Request) -> web.Response:
    require_admin(request)
    limit = query_limit(request)
    cursor = query_cursor(request, DEAD_CURSOR)
    page = await request.app[QUEUE].webhooks.adead(limit, cursor)
    items = [public_delivery(d) for d in page.deliveries]
    return json_response(DeliveryPage(items, page.next_after))


@routes.post("/api/webhooks/{deliveryId}/replay")
async def replay_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    delivery_id = request.match_info["deliveryId"]
    try:
        if not DELIVERY_ID.fullmatch(delivery_id):
            raise DeliveryNotFound(delivery_id)
        delivery = await request.app[QUEUE].webhooks.areplay(delivery_id)
    except DeliveryNotFound:
        raise ApiError(404, "no dead-lettered or pending webhook delivery has this id") from None
    except DeliveryNotDead:
        raise ApiError(409, "this delivery is pending, not dead-lettered") from None
    return json_response(public_delivery(delivery), 202)
