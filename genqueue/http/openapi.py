"""The OpenAPI 3.1 document served at `GET /api/openapi.json`.

Response schemas are generated from the very Structs the handlers encode (msgspec),
so they cannot drift; the request's from the types that decode it (openapi_request.py,
which adds what this configuration offers). The dashboard's routes are documented by
dashboard.py. Every validation failure is a 400 with the error shape.
"""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue import (
    DEAD_CURSOR_PATTERN,
    DELIVERY_ID_PATTERN,
    JOB_ID_PATTERN,
    Config,
    ProviderList,
    QueueStatus,
    WebhookStats,
)
from genqueue.http.dashboard import EventSnapshot, dashboard_paths
from genqueue.http.errors import ALL_CODES, ErrorBody
from genqueue.http.openapi_parts import (
    ERRORS,
    LIMIT_PARAM,
    PUBLIC,
    REF,
    TOO_MANY_STREAMS,
    USER_ID_PARAM,
    error_ref,
    json_ref,
)
from genqueue.http.openapi_request import request_schemas
from genqueue.wire import (
    STATUSES,
    DeliveryPage,
    JobPage,
    PublicJob,
)

__all__ = ["build_openapi"]

_RENAMES = {
    "PublicJob": "Job",
    "PublicParams": "JobParameters",
    "PublicResult": "JobResult",
    "PublicDelivery": "WebhookDelivery",
}


def _rename(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(REF):
                name = value[len(REF) :]
                value = REF + _RENAMES.get(name, name)
            out[key] = _rename(value)
        return out
    if isinstance(node, list):
        return [_rename(v) for v in node]
    return node


def _schemas(config: Config | None) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            PublicJob,
            JobPage,
            ErrorBody,
            QueueStatus,
            DeliveryPage,
            WebhookStats,
            EventSnapshot,
            ProviderList,
        ],
        ref_template=REF + "{name}",
    )
    components = msgspec.json.decode(msgspec.json.encode(components))  # tuple defaults: lists
    schemas = {_RENAMES.get(k, k): _rename(v) for k, v in components.items()}
    for name in _RENAMES.values():
        schemas[name]["title"] = name
    codes = schemas["ErrorDetail"]["properties"]["code"]
    codes["description"] = "One of: " + ", ".join(ALL_CODES)
    schemas.update(request_schemas(config))
    schemas["QueueStatus"]["properties"]["webhooks"] = {"$ref": REF + "WebhookStats"}
    return schemas


_JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
}
_ONE_STATUS = "(" + "|".join(STATUSES) + ")"
_STATUS_LIST = f"^({_ONE_STATUS}(,{_ONE_STATUS})*)?$"
# One Server-Sent Event (OpenAPI 3.1: the schema of a text/event-stream describes an event).
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": REF + "Job"},
        },
    },
}


def _paths() -> dict[str, Any]:
    job = json_ref("Job", "The job.")
    not_found = error_ref("No such job, or it belongs to another user.")
    return {
        "/api/generations": {
            "post": {
                "operationId": "submitGeneration",
                "summary": "Submit a video generation; acknowledged once durably stored.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": REF + "GenerationRequest"}}
                    },
                },
                "responses": {
                    "202": json_ref("Job", "Accepted and queued."),
                    "200": json_ref("Job", "A job with this client-chosen id already existed."),
                    "400": error_ref(
                        "Not JSON (invalid_json) or invalid; `field` names the input."
                    ),
                    "409": error_ref(
                        "The client-chosen id is taken by another user (id_conflict)."
                    ),
                    "413": error_ref("The body is larger than 1 MB."),
                    "415": error_ref("The body is declared as something other than JSON."),
                    "429": error_ref(
                        "Too many waiting jobs, in all or for this user (queue_full): "
                        "GENQUEUE_MAX_QUEUED, GENQUEUE_MAX_QUEUED_PER_USER."
                    ),
                    "503": error_ref("The state store refuses writes (storage_unavailable)."),
                    **ERRORS,
                },
            },
            "get": {
                "operationId": "listGenerations",
                "summary": "The caller's jobs (an admin's: everyone's, or one user's), newest "
                "first.",
                "description": "A page may hold fewer than `limit` items when filtering; "
                "continue with `cursor=nextCursor` while `nextCursor` is not null.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "description": "Comma-separated statuses to keep (no spaces), among: "
                        + ", ".join(STATUSES)
                        + ". Empty: every status.",
                        "schema": {"type": "string", "pattern": _STATUS_LIST},
                    },
                    LIMIT_PARAM,
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": r"^[0-9]{16}$"},
                    },
                    USER_ID_PARAM,
                ],
                "responses": {
                    "200": json_ref("JobPage", "A page of jobs."),
                    "400": error_ref("A bad status, limit, cursor or userId; `field` names it."),
                    "403": error_ref("A key that is not an admin's named another user."),
                    **ERRORS,
                },
            },
        },
        "/api/generations/{id}": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getGeneration",
                "responses": {"200": job, "404": not_found, **ERRORS},
            },
            "delete": {
                "operationId": "cancelGeneration",
                "summary": "Cancel a job that has not finished.",
                "responses": {
                    "200": json_ref("Job", "Cancelled."),
                    "202": json_ref("Job", "Running: cancellation is under way."),
                    "404": not_found,
                    "409": error_ref("The job has already finished (job_finished)."),
                    **ERRORS,
                },
            },
        },
        "/api/generations/{id}/events": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "generationEvents",
                "summary": "Server-Sent Events: `status` and `progress`, each with the job "
                "as data; the stream ends after the terminal status.",
                "responses": {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                    },
                    "404": not_found,
                    "429": TOO_MANY_STREAMS,
                    **ERRORS,
                },
            },
        },
        **dashboard_paths(),
        "/api/providers": {
            "get": {
                "operationId": "listProviders",
                "summary": "The providers this server offers: their models, each model's "
                "capabilities and price a second of video.",
                "responses": {"200": json_ref("ProviderList", "The providers."), **ERRORS},
            }
        },
        "/api/queue/status": {
            "get": {
                "operationId": "queueStatus",
                "responses": {"200": json_ref("QueueStatus", "The queue's figures."), **ERRORS},
            }
        },
        "/api/webhooks/dead": {
            "get": {
                "operationId": "listDeadWebhooks",
                "summary": "Dead-lettered webhook deliveries (admin only), by job id.",
                "description": "Continue with `cursor=nextCursor` while it is not null.",
                "parameters": [
                    LIMIT_PARAM,
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": DEAD_CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    "200": json_ref("DeliveryPage", "A page of dead-lettered deliveries."),
                    "400": error_ref("A bad limit or cursor; `field` names it."),
                    "403": error_ref("The API key is not an admin key."),
                    **ERRORS,
                },
            }
        },
        "/api/webhooks/{deliveryId}/replay": {
            "parameters": [
                {
                    "name": "deliveryId",
                    "in": "path",
                    "required": True,
                    "description": "The `webhook-id` of the delivery (`msg_...`).",
                    "schema": {"type": "string", "pattern": DELIVERY_ID_PATTERN},
                }
            ],
            "post": {
                "operationId": "replayWebhook",
                "summary": "Send a dead-lettered delivery again (admin only): the same "
                "`webhook-id` and body, a fresh retry schedule.",
                "responses": {
                    "202": json_ref("WebhookDelivery", "Pending again; it is sent at once."),
                    "403": error_ref("The API key is not an admin key."),
                    "404": error_ref("No dead-lettered or pending delivery has this id."),
                    "409": error_ref("The delivery is pending, not dead-lettered."),
                    **ERRORS,
                },
            },
        },
        "/metrics": {
            "get": {
                **PUBLIC,
                "operationId": "metrics",
                "summary": "The queue's figures in the Prometheus text format.",
                "responses": {
                    "200": {
                        "description": "Prometheus text.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "default": ERRORS["default"],
                },
            }
        },
        "/healthz": {
            "get": {
                **PUBLIC,
                "operationId": "health",
                "responses": {
                    "200": {
                        "description": "Serving.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                }
                            }
                        },
                    },
                    "503": error_ref("The state store has failed."),
                    "default": ERRORS["default"],
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                **PUBLIC,
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "This document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "default": ERRORS["default"],
                },
            }
        },
        "/videos/{userId}/{fileName}": {
            "get": {
                **PUBLIC,
                "operationId": "video",
                "summary": "A finished video from local storage (supports Range).",
                "description": (
                    "Only at the signed URL a job's `result.videoUrl` gives (re-signed on every"
                    " read, valid for GENQUEUE_VIDEO_URL_TTL_S). No API key is needed: the"
                    " signature is the credential."
                ),
                "parameters": [
                    {
                        "name": "userId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "fileName",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": r"\.mp4$"},
                    },
                    {
                        "name": "expires",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                    },
                    {
                        "name": "signature",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The video.",
                        "content": {
                            "video/mp4": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "403": error_ref("The URL is unsigned, expired or altered."),
                    "404": error_ref("No such video."),
                    "default": ERRORS["default"],
                },
            }
        },
    }


def build_openapi(version: str = "0.1.0", config: Config | None = None) -> dict[str, Any]:
    """The document, as a dict ready to encode."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genqueue",
            "version": version,
            "description": "A durable job queue for AI video generation. Errors are "
            '`{"error": {"code", "message", "field"?}}`; every validation error is a 400.',
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(config),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key."}
            },
        },
    }
