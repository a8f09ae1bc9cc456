"""The OpenAPI 3.1 document served at `GET /api/openapi.json`.

Response schemas are generated from the very Structs the handlers encode (msgspec),
so they cannot drift; the request schema is written out here because its rules
(lengths, enums, the resolution/duration rule) live in `validate_request`, not in
the type. Every validation failure is a 400 with the error shape.
"""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.actors.webhook import DeliveryPage, WebhookStats
from genqueue.config import Config
from genqueue.http.dashboard import QUEUE_EVERY_S, EventSnapshot
from genqueue.http.errors import ALL_CODES, ErrorBody
from genqueue.http.views import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    JobPage,
    PublicJob,
)
from genqueue.models import MAX_FALLBACK, MAX_NAME_CHARS, MAX_PROMPT_CHARS, PROVIDERS, QueueStatus
from genqueue.providers.registry import ALIASES, ProviderList, Registry
from genqueue.providers.veo.schema import model_and_parameters_schema, model_clauses

__all__ = ["build_openapi"]

REF = "#/components/schemas/"
_RENAMES = {
    "PublicJob": "Job",
    "PublicParams": "JobParameters",
    "PublicResult": "JobResult",
    "PublicDelivery": "WebhookDelivery",
}

_TEXT = {"type": "string", "maxLength": MAX_PROMPT_CHARS}
# No C0 control character but tab and newline (models.CONTROL_CHARS), in ECMA-262 syntax.
_NO_CONTROLS = r"[^\u0000-\u0008\u000b-\u001f]"
_JOB_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9._:\-]{1,128}$"
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "GenerationRequest",
    "type": "object",
    "additionalProperties": False,
    "required": ["prompt"],
    "properties": {
        "prompt": {
            **_TEXT,
            "minLength": 1,
            # something not blank, and no control character but tab and newline
            "pattern": f"^{_NO_CONTROLS}*[^\\s\\u0000-\\u001f]{_NO_CONTROLS}*$",
            "description": "Not blank; no control characters but tab and newline.",
        },
        "id": {
            "type": ["string", "null"],
            "pattern": _JOB_ID_PATTERN,
            "description": "Client-chosen id: the same id again returns the same job (200).",
        },
        "provider": {
            "type": "string",
            "enum": list(PROVIDERS),
            "maxLength": MAX_NAME_CHARS,
            "default": "veo3",
        },
        "priority": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "default": 0,
            "description": "Higher starts first.",
        },
    },
}


_LIMIT_PARAM: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
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
    schemas["GenerationRequest"] = request_schema(config)
    schemas["QueueStatus"]["properties"]["webhooks"] = {"$ref": REF + "WebhookStats"}
    return schemas


def _json(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF + name}}},
    }


def _err(description: str) -> dict[str, Any]:
    return _json("ErrorBody", description)


_TOO_MANY_STREAMS = _err(
    "This API key holds as many open event streams as it may (too_many_streams): "
    "GENQUEUE_MAX_STREAMS_PER_KEY."
)
_ERRORS = {
    "401": _err("Missing or unknown API key (or no keys configured)."),
    "default": _err("Any other error, in the same shape."),
}
_JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _JOB_ID_PATTERN},
}
_PUBLIC: dict[str, Any] = {"security": []}
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
    job = _json("Job", "The job.")
    not_found = _err("No such job, or it belongs to another user.")
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
                    "202": _json("Job", "Accepted and queued."),
                    "200": _json("Job", "A job with this client-chosen id already existed."),
                    "400": _err("Not JSON (invalid_json) or invalid; `field` names the input."),
                    "409": _err("The client-chosen id is taken by another user (id_conflict)."),
                    "413": _err("The body is larger than 1 MB."),
                    "415": _err("The body is declared as something other than JSON."),
                    "429": _err(
                        "Too many waiting jobs, in all or for this user (queue_full): "
                        "GENQUEUE_MAX_QUEUED, GENQUEUE_MAX_QUEUED_PER_USER."
                    ),
                    "503": _err("The state store refuses writes (storage_unavailable)."),
                    **_ERRORS,
                },
            },
            "get": {
                "operationId": "listGenerations",
                "summary": "The caller's jobs (an admin's: everyone's), newest first.",
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
                    _LIMIT_PARAM,
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": r"^[0-9]{16}$"},
                    },
                ],
                "responses": {
                    "200": _json("JobPage", "A page of jobs."),
                    "400": _err("A bad status, limit or cursor; `field` names it."),
                    **_ERRORS,
                },
            },
        },
        "/api/generations/{id}": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getGeneration",
                "responses": {"200": job, "404": not_found, **_ERRORS},
            },
            "delete": {
                "operationId": "cancelGeneration",
                "summary": "Cancel a job that has not finished.",
                "responses": {
                    "200": _json("Job", "Cancelled."),
                    "202": _json("Job", "Running: cancellation is under way."),
                    "404": not_found,
                    "409": _err("The job has already finished (job_finished)."),
                    **_ERRORS,
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
                    "429": _TOO_MANY_STREAMS,
                    **_ERRORS,
                },
            },
        },
        **_dashboard_paths(),
        "/api/providers": {
            "get": {
                "operationId": "listProviders",
                "summary": "The providers this server offers: their models, each model's "
                "capabilities and price a second of video.",
                "responses": {"200": _json("ProviderList", "The providers."), **_ERRORS},
            }
        },
        "/api/queue/status": {
            "get": {
                "operationId": "queueStatus",
                "responses": {"200": _json("QueueStatus", "The queue's figures."), **_ERRORS},
            }
        },
        "/api/webhooks/dead": {
            "get": {
                "operationId": "listDeadWebhooks",
                "summary": "Dead-lettered webhook deliveries (admin only), by job id.",
                "description": "Continue with `cursor=nextCursor` while it is not null.",
                "parameters": [
                    _LIMIT_PARAM,
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": r"^[A-Za-z0-9._:\-]{1,128}/[0-9]{7}$",
                        },
                    },
                ],
                "responses": {
                    "200": _json("DeliveryPage", "A page of dead-lettered deliveries."),
                    "400": _err("A bad limit or cursor; `field` names it."),
                    "403": _err("The API key is not an admin key."),
                    **_ERRORS,
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
                    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_\-]{1,128}$"},
                }
            ],
            "post": {
                "operationId": "replayWebhook",
                "summary": "Send a dead-lettered delivery again (admin only): the same "
                "`webhook-id` and body, a fresh retry schedule.",
                "responses": {
                    "202": _json("WebhookDelivery", "Pending again; it is sent at once."),
                    "403": _err("The API key is not an admin key."),
                    "404": _err("No dead-lettered or pending delivery has this id."),
                    "409": _err("The delivery is pending, not dead-lettered."),
                    **_ERRORS,
                },
            },
        },
        "/metrics": {
            "get": {
                **_PUBLIC,
                "operationId": "metrics",
                "summary": "The queue's figures in the Prometheus text format.",
                "responses": {
                    "200": {
                        "description": "Prometheus text.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "default": _ERRORS["default"],
                },
            }
        },
        "/healthz": {
            "get": {
                **_PUBLIC,
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
                    "503": _err("The state store has failed."),
                    "default": _ERRORS["default"],
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                **_PUBLIC,
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "This document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "default": _ERRORS["default"],
                },
            }
        },
        "/videos/{userId}/{fileName}": {
            "get": {
                **_PUBLIC,
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
                    "403": _err("The URL is unsigned, expired or altered."),
                    "404": _err("No such video."),
                    "default": _ERRORS["default"],
                },
            }
        },
    }


def _feed_event(event: str, schema: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": event},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": REF + schema},
            },
        },
    }


def _dashboard_paths() -> dict[str, Any]:
    """`GET /` (the live dashboard) and its feed `GET /api/events` (see dashboard.py)."""
    return {
        "/": {
            "get": {
                **_PUBLIC,
                "operationId": "dashboard",
                "summary": "The live dashboard: one HTML page (it asks for an API key).",
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "default": _ERRORS["default"],
                },
            }
        },
        "/api/events": {
            "get": {
                "operationId": "events",
                "summary": "Every change the caller may see (an admin: all jobs; a user: "
                "its own) and the queue's figures.",
                "description": "With `Accept: text/event-stream`, Server-Sent Events: "
                "`snapshot` first (the queue's figures and the newest jobs), then `job` "
                "with the whole job on each change (changes arriving together are "
                f"coalesced, newest per job) and `queue` every {QUEUE_EVERY_S:g} s; the "
                "stream ends only when the server stops. Without that Accept header: the "
                "snapshot alone, as JSON.",
                "responses": {
                    "200": {
                        "description": "The snapshot, or the event stream.",
                        "content": {
                            "application/json": {"schema": {"$ref": REF + "EventSnapshot"}},
                            "text/event-stream": {
                                "schema": {
                                    "oneOf": [
                                        _feed_event("snapshot", "EventSnapshot"),
                                        _feed_event("job", "Job"),
                                        _feed_event("queue", "QueueStatus"),
                                    ]
                                }
                            },
                        },
                    },
                    "429": _TOO_MANY_STREAMS,
                    **_ERRORS,
                },
            }
        },
    }


def request_schema(config: Config | None = None) -> dict[str, Any]:
    """The submission's schema for the providers `config` offers (each model's limits)."""
    registry = Registry(config or Config())
    veo = registry.veo
    model, parameters, _ = model_and_parameters_schema(veo.dialect, veo.model, veo.models)
    schema = {**REQUEST_SCHEMA, "properties": dict(REQUEST_SCHEMA["properties"])}
    names = [n for n, c in ALIASES.items() if c in registry.providers]
    one = {**REQUEST_SCHEMA["properties"]["provider"], "enum": names}
    one.pop("default", None)
    schema["properties"]["provider"] = {
        "anyOf": [
            one,
            {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_FALLBACK},
        ],
        "default": "veo3",
        "description": "One provider, or an ordered fallback list (each then runs its "
        "default model: no `model`).",
    }
    schema["properties"]["parameters"] = parameters
    clauses: list[dict[str, Any]] = []
    all_models: list[str | None] = []
    for name, info in registry.providers.items():
        aliases = [n for n, c in ALIASES.items() if c == name]
        named = {"anyOf": [{"enum": aliases}, {"type": "array", "contains": {"enum": aliases}}]}
        when: dict[str, Any] = {"required": ["provider"], "properties": {"provider": named}}
        if name == "veo3":  # the default provider
            when = {"anyOf": [when, {"not": {"required": ["provider"]}}]}
        models = [m.id for m in info.models]
        all_models += models
        clauses.append({"if": when, "then": {"properties": {"model": {"enum": [*models, None]}}}})
        rows = {m.id: m.capabilities for m in info.models}
        clauses += model_clauses(rows, info.default_model, when)
    schema["properties"]["model"] = {**model, "enum": [*all_models, None]}
    clauses.append(  # a fallback list: each provider's default model
        {
            "if": {
                "required": ["provider"],
                "properties": {"provider": {"type": "array", "minItems": 2}},
            },
            "then": {"properties": {"model": {"type": "null"}}},
        }
    )
    schema["allOf"] = clauses
    return schema


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
