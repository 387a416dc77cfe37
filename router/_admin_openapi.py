"""The OpenAPI 3.1 description of the admin API, served at ``GET /_router/openapi.json``.

Written by hand next to :mod:`router.admin` rather than generated: the endpoints
are plain Starlette routes, and the shapes here are the contract of DESIGN section 6.
A test checks that every route of :class:`~router.admin.AdminAPI` is described,
with its methods, and that the document is valid OpenAPI.
"""

from __future__ import annotations

from typing import Any

from .deadletters import MAX_PAGE, REASONS

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "Unusable input: a bad filter, cursor, limit, id or body.",
        401: "No admin token, or a wrong one. The body carries no data.",
        404: "No such record or event, or the admin API is not enabled.",
        413: "Body over 1 MiB.",
        501: "prometheus-client is not installed.",
        503: "A dead-letter store or the scale-out backend does not answer.",
    }
    return {str(status): _json(_ref("Error"), words[status]) for status in statuses}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_NULLABLE_STRING = {"type": ["string", "null"]}
_SINCE = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_SINCE_TEXT = (
    "Created at or after: a duration back from now (30s, 15m, 2h, 7d), an ISO 8601 time "
    "(2026-11-21T23:00:00Z; UTC when no zone), or unix seconds."
)
_FILTERS: dict[str, Any] = {
    "reason": {"type": "string", "enum": list(REASONS)},
    "user_id": {"type": "string"},
    "thread_id": {"type": "string"},
    "run_id": {"type": "string"},
    "since": {**_SINCE, "description": _SINCE_TEXT},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string", "description": "A sentence saying what is wrong."},
            "code": {
                "type": "string",
                "enum": [
                    "bad_request",
                    "unauthorized",
                    "not_found",
                    "disabled",
                    "too_large",
                    "unavailable",
                    "method_not_allowed",
                ],
            },
        },
    },
    "DeadLetter": {
        "type": "object",
        "description": "DESIGN section 7. event is the original as received: parsed JSON, "
        "or its text (at most 65536 characters) with event_raw true.",
        "required": [
            "id",
            "reason",
            "detail",
            "event",
            "event_raw",
            "created_at",
            "attempts",
            "history",
        ],
        "properties": {
            "id": {"type": "string", "description": "32 hex characters; sorts by time."},
            "reason": {"type": "string", "enum": list(REASONS)},
            "detail": {"type": "string"},
            "event": {"description": "The original event."},
            "event_raw": {"type": "boolean"},
            "event_id": _NULLABLE_STRING,
            "event_type": _NULLABLE_STRING,
            "run_id": _NULLABLE_STRING,
            "thread_id": _NULLABLE_STRING,
            "user_id": _NULLABLE_STRING,
            "created_at": {"type": "string", "format": "date-time"},
            "attempts": {"type": "integer", "minimum": 1},
            "history": {
                "type": "array",
                "description": "Earlier attempts, newest first.",
                "items": {
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string"},
                        "detail": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    },
    "DeadLetterPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("DeadLetter")},
            "next_cursor": {
                **_NULLABLE_STRING,
                "description": "Pass as cursor for the next (older) page; null on the last.",
            },
        },
    },
    "ReplayResult": {
        "type": "object",
        "required": ["accepted", "seq", "reason", "dead_letter"],
        "properties": {
            "accepted": {"type": "boolean"},
            "seq": {"type": ["integer", "null"]},
            "reason": _NULLABLE_STRING,
            "dead_letter": {
                "oneOf": [_ref("DeadLetter"), {"type": "null"}],
                "description": "The record after a failed attempt; null when it is gone.",
            },
        },
    },
    "BulkReplay": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_FILTERS,
            "dry_run": {"type": "boolean", "default": False},
            "max": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
            "rate": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 10000,
                "default": 500,
                "description": "Replays per second at most.",
            },
        },
    },
    "ReplayReport": {
        "type": "object",
        "required": ["matched", "accepted", "rejected", "skipped"],
        "properties": {
            name: {"type": "integer", "minimum": 0}
            for name in ("matched", "accepted", "rejected", "skipped")
        },
    },
    "Purge": {
        "type": "object",
        "additionalProperties": False,
        "description": 'At least one filter or older_than; {"older_than": 0} purges all.',
        "properties": {
            **_FILTERS,
            "older_than": {
                "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
                "description": "Created more than this long ago: 7d, 12h, 30m, 45s, or seconds.",
            },
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {"deleted": {"type": "integer", "minimum": 0}},
    },
    "EventLookup": {
        "type": "object",
        "required": ["event_id", "status", "accepted", "dead_letters", "explanation"],
        "properties": {
            "event_id": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "dead_lettered"]},
            "accepted": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            "thread_id": {"type": "string"},
                            "seq": {"type": "integer"},
                            "delivered_to": {
                                "type": ["integer", "null"],
                                "description": "Connections it was queued for (in-process "
                                "backend); null with a scale-out backend, which fans out in "
                                "every process, or when found only in the thread's history.",
                            },
                            "owner_connected": {
                                "type": ["boolean", "null"],
                                "description": "Whether the thread's owner had a live "
                                "connection anywhere when it was published.",
                            },
                            "in_history": {"type": "boolean"},
                        },
                    },
                    {"type": "null"},
                ]
            },
            "dead_letters": {"type": "array", "items": _ref("DeadLetter")},
            "explanation": {"type": "string"},
        },
    },
    "Stats": {
        "type": "object",
        "description": "published == accepted + sum(rejected) + spool_pending. dead_letters "
        "counts records this process wrote; dead_letters_stored what the stores hold now.",
        "properties": {
            "process_id": {"type": "string"},
            "published": {"type": "integer"},
            "accepted": {"type": "integer"},
            "rejected": {"type": "object", "additionalProperties": {"type": "integer"}},
            "dead_letters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "dead_letters_stored": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "integer"},
            },
            "delivered": {"type": "integer"},
            "connections": {"type": "integer"},
            "slow_consumer_closes": {"type": "integer"},
            "spooled": {"type": "integer"},
            "spool_pending": {"type": "integer"},
            "dead_letter_retention_removed": {"type": "integer"},
            "backend": {"type": "object"},
        },
    },
    "PublishResult": {
        "type": "object",
        "properties": {
            "accepted": {"type": "boolean"},
            "event_id": {"type": "string"},
            "seq": {"type": ["integer", "null"]},
            "reason": _NULLABLE_STRING,
            "detail": _NULLABLE_STRING,
            "dead_letter_id": _NULLABLE_STRING,
            "spooled": {"type": "boolean"},
        },
    },
}


def openapi_document(root_path: str = "/_router") -> dict[str, Any]:
    """The admin API under ``root_path``, as an OpenAPI 3.1 document."""
    record_id = _path("record_id", "A dead-letter id.")
    body = {"required": False, "content": {"application/json": {"schema": _ref("BulkReplay")}}}
    purge = {"required": True, "content": {"application/json": {"schema": _ref("Purge")}}}
    filters = [
        _query(name, schema.get("description", f"Only records with this {name}."), schema)
        for name, schema in _FILTERS.items()
    ]
    paths: dict[str, Any] = {
        "/dead-letters": {
            "get": {
                "summary": "List dead letters, newest first",
                "description": "The router's store and its spool store, merged. A cursor "
                "stays correct while records are added.",
                "parameters": [
                    *filters,
                    _query("event_id", "Only records of this event.", {"type": "string"}),
                    _query(
                        "limit",
                        "Page size.",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
                    ),
                    _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
                ],
                "responses": {
                    "200": _json(_ref("DeadLetterPage"), "A page."),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/dead-letters/{record_id}": {
            "get": {
                "summary": "One dead letter",
                "parameters": [record_id],
                "responses": {
                    "200": _json(_ref("DeadLetter"), "The record."),
                    **_errors(400, 401, 404, 503),
                },
            },
            "delete": {
                "summary": "Discard one dead letter",
                "parameters": [record_id],
                "responses": {
                    "200": _json(_ref("Deleted"), "Deleted."),
                    **_errors(400, 401, 404, 503),
                },
            },
        },
        "/dead-letters/{record_id}/replay": {
            "post": {
                "summary": "Replay one dead letter",
                "description": "Re-runs the whole pipeline with the same event_id. Accepted: "
                "the record is removed. Rejected again: attempts + 1, the old reason goes to "
                "history.",
                "parameters": [record_id],
                "responses": {
                    "200": _json(_ref("ReplayResult"), "What the pipeline decided."),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/dead-letters/replay": {
            "post": {
                "summary": "Replay many dead letters",
                "description": "Oldest first, at most max, at most rate per second; answers "
                "when done. With dry_run nothing is replayed and every match is skipped.",
                "requestBody": body,
                "responses": {
                    "200": _json(_ref("ReplayReport"), "Counts."),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/dead-letters/purge": {
            "post": {
                "summary": "Discard dead letters by filter and age",
                "requestBody": purge,
                "responses": {
                    "200": _json(_ref("Deleted"), "How many were discarded."),
                    **_errors(400, 401, 503),
                },
            }
        },
        "/events/{event_id}": {
            "get": {
                "summary": "What became of one event",
                "description": "Accepted (thread, seq, connections it was queued for) if "
                "among this process's recent events or, with thread_id, in that thread's "
                "history; dead-lettered (the records) if in the store.",
                "parameters": [
                    _path("event_id", "The event's id."),
                    _query("thread_id", "Search this thread's history too.", {"type": "string"}),
                ],
                "responses": {
                    "200": _json(_ref("EventLookup"), "What is known."),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/stats": {
            "get": {
                "summary": "Accounting figures",
                "responses": {"200": _json(_ref("Stats"), "Figures."), **_errors(401)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "The same figures, Prometheus text format",
                "description": "Open without a token when the server sets metrics_public.",
                "responses": {
                    "200": {
                        "description": "Prometheus exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 501),
                },
            }
        },
        "/publish": {
            "post": {
                "summary": "Publish one event",
                "description": "For agents in other processes. Accepts the publish token as "
                "well as the admin token. The body is the event (DESIGN section 2).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "202": _json(_ref("PublishResult"), "Accepted (or spooled)."),
                    "422": _json(_ref("PublishResult"), "Rejected: a dead letter was written."),
                    **_errors(401, 413),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1."}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-event-router admin API",
            "version": "1",
            "description": "Dead letters, replay, event lookup, figures and HTTP publishing "
            "of one router. JSON in and out; Authorization: Bearer <admin token>.",
        },
        "servers": [{"url": root_path or "/"}],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
