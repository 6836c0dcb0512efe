"""The OpenAPI 3.1 document of the v1 API: one dict, serialized to the same bytes everywhere."""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["openapi_bytes", "openapi_document"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema_ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

_COMMON = {"401": _error("Missing or invalid API key")}

_STATES = ["queued", "running", "succeeded", "failed"]

_ERROR_BODY = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}

#: ``checks`` of both /ready answers.
_CHECKS = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": 'Check name -> "ok" (else "failing", or its message with a key).',
}


def openapi_document() -> dict[str, Any]:
    """The v1 API described as OpenAPI 3.1."""
    from convkit._version import __version__

    nullable_dt = {"type": ["string", "null"], "format": "date-time"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "convkit",
            "version": __version__,
            "description": "Templates + JSON data -> documents, as durable jobs.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process answers.",
                    "security": [],
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness of what this process uses: database, queue, storage "
                    "and, where jobs run, the converter. No key needed; with a valid key each "
                    'failing check shows its message instead of "failing".',
                    "security": [{}, {"bearer": []}, {"apiKey": []}],
                    "responses": {
                        "200": _json(
                            "Serving: `status` is `ready` when every dependency works, "
                            "`degraded` when only the queue is down (submits answer 503)",
                            "Readiness",
                        ),
                        "503": _json(
                            "A dependency other than the queue is down; `checks` names it",
                            "NotReady",
                        ),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
            "/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job: render a template with data, convert it.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "A retried submit with the same key returns the "
                            "same job (409 if the request differs).",
                            "schema": {"type": "string", "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/JobRequest"}
                            },
                            "multipart/form-data": {
                                "schema": {"$ref": "#/components/schemas/UploadRequest"}
                            },
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted; `Location` points at the job",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                            },
                        },
                        "400": _error("Malformed JSON"),
                        **_COMMON,
                        "403": _error("Template not allowed for this key"),
                        "409": _error("Idempotency-Key reused for a different request"),
                        "413": _error(
                            "Body larger than MAX_REQUEST_BYTES (MAX_UPLOAD_BYTES for uploads)"
                        ),
                        "415": _error("Neither application/json nor multipart/form-data"),
                        "422": _error(
                            "Unknown template, unsupported format pair, bad locale or options, "
                            "data not matching the template's schema, invalid fields"
                        ),
                        "503": _error("Queue or database unavailable; nothing was stored"),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "Your jobs, newest first.",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 200,
                                "default": 50,
                            },
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "status",
                            "in": "query",
                            "description": "Only jobs in this state.",
                            "schema": {"type": "string", "enum": _STATES},
                        },
                    ],
                    "responses": {
                        "200": _json("A page of jobs", "JobPage"),
                        **_COMMON,
                        "422": _error("Invalid limit, cursor or status"),
                    },
                },
            },
            "/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status.",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("The job", "Job"),
                        **_COMMON,
                        "404": _error("No such job"),
                    },
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Delete a job and its artifact.",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "204": {"description": "Deleted"},
                        **_COMMON,
                        "404": _error("No such job"),
                    },
                },
            },
            "/jobs/{job_id}/result": {
                "get": {
                    "operationId": "getJobResult",
                    "summary": "Download the artifact of a succeeded job.",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": {
                            "description": "The artifact, streamed",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        **_COMMON,
                        "404": _error("No such job"),
                        "409": _error("The job has not succeeded (yet)"),
                    },
                }
            },
            "/jobs/{job_id}/retry": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "Put a failed job back in the queue with fresh attempts "
                    "(attempts 0; its last error stays until an attempt finishes).",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "202": {
                            "description": "Queued again; `Location` points at the job",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                            },
                        },
                        **_COMMON,
                        "404": _error("No such job"),
                        "409": _error("The job is not failed"),
                        "503": _error("Queue or database unavailable; nothing changed"),
                    },
                }
            },
            "/templates": {
                "get": {
                    "operationId": "listTemplates",
                    "summary": "Template names this key may use.",
                    "responses": {
                        "200": {
                            "description": "Template names",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "templates": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **_COMMON,
                    },
                }
            },
            "/templates/{name}": {
                "get": {
                    "operationId": "getTemplate",
                    "summary": "What a template needs and produces (for building forms).",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _json("The template's description", "TemplateInfo"),
                        **_COMMON,
                        "403": _error("Template not allowed for this key"),
                        "404": _error("No such template"),
                        "422": _error("Invalid template name, or the template does not compile"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": _ERROR_BODY,
                    },
                },
                "JobRequest": {
                    "type": "object",
                    "required": ["template", "format"],
                    "additionalProperties": False,
                    "properties": {
                        "template": {"type": "string", "examples": ["invoice"]},
                        "data": {"type": "object"},
                        "format": {"type": "string", "examples": ["pdf"]},
                        "locale": {"type": ["string", "null"], "examples": ["en_US"]},
                        "options": {"type": ["object", "null"]},
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "status": {"type": "string", "enum": _STATES},
                        "template": {
                            "type": ["string", "null"],
                            "description": "null for an upload conversion job",
                        },
                        "format": {"type": "string"},
                        "locale": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "started_at": nullable_dt,
                        "finished_at": nullable_dt,
                        "attempts": {"type": "integer"},
                        "error": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "code": {"type": "string"},
                                        "message": {"type": "string"},
                                    },
                                },
                            ]
                        },
                        "result_url": {"type": ["string", "null"]},
                    },
                },
                "UploadRequest": {
                    "type": "object",
                    "required": ["file", "format"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The document; its suffix is its format.",
                        },
                        "format": {"type": "string", "examples": ["pdf"]},
                        "source_format": {
                            "type": "string",
                            "description": "The document's format; overrides the file "
                            "name's suffix, and is required without one "
                            "(`missing_source_format`).",
                        },
                        "locale": {"type": "string", "examples": ["de_DE"]},
                        "options": {
                            "type": "string",
                            "description": "A JSON object of conversion options.",
                        },
                    },
                },
                "TemplateInfo": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "engine": {"type": "string"},
                        "format": {"type": "string", "description": "What the engine renders."},
                        "formats": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Formats a job may ask for.",
                        },
                        "variables": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Top-level data names it reads.",
                        },
                        "schema": {
                            "type": ["object", "null"],
                            "description": "The JSON Schema job data must match.",
                        },
                    },
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ready", "degraded"]},
                        "checks": _CHECKS,
                    },
                },
                "NotReady": {
                    "type": "object",
                    "required": ["error", "checks"],
                    "properties": {
                        "error": {
                            **_ERROR_BODY,
                            "description": "`code` is `not_ready`; `message` names the "
                            "failing checks.",
                        },
                        "checks": _CHECKS,
                    },
                },
                "JobPage": {
                    "type": "object",
                    "properties": {
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }


@functools.cache
def openapi_bytes() -> bytes:
    """The document as canonical JSON bytes (sorted keys), identical from every adapter."""
    return json.dumps(openapi_document(), sort_keys=True, separators=(",", ":")).encode()
