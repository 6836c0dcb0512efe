"""The v1 HTTP API, written once: request -> auth -> parse -> validate -> service -> response.

Adapters (FastAPI, Flask, Django) only translate their native request into :class:`HttpRequest`
and :class:`HttpResponse` back; every rule of the API lives here.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import attrs

from convkit.errors import (
    ConvKitError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from convkit.job import Job, JobSpec, JobState, check_json_depth
from convkit.logs import bind, current_context, log_context
from convkit.runner import call_event
from convkit.service import ConvKit
from convkit.settings import Tenant

__all__ = [
    "API_PREFIX",
    "ClientDisconnected",
    "HttpApi",
    "HttpRequest",
    "HttpResponse",
    "cut_off",
]

log = logging.getLogger("convkit.http")
#: One line per request: ``GET /jobs/{job_id} 200`` with method, route, status, duration.
access_log = logging.getLogger("convkit.access")

API_PREFIX = "/api/v1"

BodyReader = Callable[[int], bytes]


def _no_body(limit: int) -> bytes:
    return b""


class ClientDisconnected(Exception):
    """The client went away before it sent the whole body. Adapters raise it from their body
    readers for their framework's own signal; the core answers 499 and logs one INFO line."""


def cut_off(read: BodyReader) -> BodyReader:
    """A reader giving what ``read`` gives, then raising :class:`ClientDisconnected` where it
    ends (for an adapter that learnt of the disconnect before the core read the body)."""

    def reader(limit: int) -> bytes:
        chunk = read(limit)
        if not chunk and limit > 0:
            raise ClientDisconnected("the client disconnected mid-body")
        return chunk

    return reader


def _counted(read: BodyReader, declared: int) -> BodyReader:
    """``read``, raising :class:`ClientDisconnected` when it ends before ``declared`` bytes: a
    WSGI server hands a cut-off body over as a short one."""
    seen = 0

    def reader(limit: int) -> bytes:
        nonlocal seen
        chunk = read(limit)
        seen += len(chunk)
        if not chunk and limit > 0 and seen < declared:
            raise ClientDisconnected(f"the body ended after {seen} of {declared} bytes")
        return chunk

    return reader


#: ``X-Request-ID`` values taken as they are; anything else is replaced by a generated id.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: W3C Trace Context ``traceparent``: version-trace_id-parent_id-flags, lower-case hex.
_TRACEPARENT = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$"
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def read_at_most(read: BodyReader, limit: int) -> bytes:
    """Read chunks until the end or until ``limit`` bytes were read."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = read(min(remaining, 64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


#: Room for the multipart framing and the small form fields around an upload.
_MULTIPART_OVERHEAD = 64 * 1024


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(headers).items()}


@attrs.frozen
class HttpRequest:
    """A framework-neutral request.

    ``path`` is relative to where the API is mounted (``/jobs/…``); ``base`` is that mount point
    (``/api/v1``), used to build ``Location`` and result URLs. ``body(n)`` reads the next chunk
    of at most ``n`` bytes of the request body (``b""`` at its end), like a file's ``read``, so the
    core reads only as much as its limits allow.
    """

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_lower_keys)
    query: Mapping[str, str] = attrs.field(factory=dict)
    body: BodyReader = _no_body
    base: str = API_PREFIX
    #: Set by the core: the client's ``X-Request-ID`` when it is a short safe token, else a
    #: generated one.
    request_id: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@attrs.frozen
class HttpResponse:
    """A framework-neutral response; ``body`` is bytes or an iterator of chunks (streamed)."""

    status: int
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    body: bytes | Iterator[bytes] = b""

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
    ) -> HttpResponse:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, [("Content-Type", "application/json"), *(headers or [])], body)

    @classmethod
    def error(cls, exc: ConvKitError) -> HttpResponse:
        headers: list[tuple[str, str]] = []
        if exc.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="convkit"'))
        if exc.status == 503:
            headers.append(("Retry-After", "5"))
        if isinstance(exc, MethodNotAllowed) and exc.allow:
            headers.append(("Allow", exc.allow))
        return cls.json(exc.status, exc.to_dict(), headers)


_JOB_ID = r"(?P<job_id>[^/]+)"

Handler = Callable[["HttpApi", HttpRequest, Tenant | None, Mapping[str, str]], HttpResponse]


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool = True
    #: The path with its parameters as ``{name}``: the access log's and metrics' label.
    template: str = ""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_to_dict(job: Job, base: str) -> dict[str, Any]:
    """The job's public JSON shape (also documented in the OpenAPI document)."""
    return {
        "id": job.id,
        "status": job.status.value,
        "template": job.template,
        "format": job.format,
        "locale": job.spec.locale,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "error": job.error.to_dict() if job.error else None,
        "result_url": f"{base}/jobs/{job.id}/result" if job.status is JobState.SUCCEEDED else None,
    }


_SUBMIT_FIELDS = {"template", "data", "format", "locale", "options"}


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser accepts them by default.
    raise ValueError(f"{name} is not valid JSON")


def parse_submit(body: bytes) -> JobSpec:
    """Parse and type-check a submit body (400 for bad JSON, 422 for wrong fields)."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ValidationError("the body must be a JSON object", code="invalid_body")
    unknown = sorted(set(payload) - _SUBMIT_FIELDS)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", code="unknown_field")
    for field, kind, required in (
        ("template", str, True),
        ("format", str, True),
        ("data", dict, False),
        ("locale", str, False),
        ("options", dict, False),
    ):
        value = payload.get(field)
        if value is None:
            if required:
                raise ValidationError(f"{field!r} is required", code="missing_field")
            continue
        if not isinstance(value, kind):
            want = "an object" if kind is dict else "a string"
            raise ValidationError(f"{field!r} must be {want}", code="invalid_field")
        if kind is dict:
            check_json_depth(field, value)
    return JobSpec(
        template=payload["template"],
        format=payload["format"],
        data=payload.get("data") or {},
        locale=payload.get("locale"),
        options=payload.get("options") or {},
    )


@attrs.define
class HttpApi:
    """The v1 API bound to one :class:`ConvKit`. ``handle`` never raises."""

    kit: ConvKit
    routes: list[Route] = attrs.field(factory=list)
    #: Served at the server's root, outside the versioned API (:meth:`handle_metrics`).
    root_routes: list[Route] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.root_routes.append(_route("GET", "/metrics", _metrics, auth=False))
        r = self._add
        r("GET", "/health", _health, auth=False)
        r("GET", "/openapi.json", _openapi, auth=False)
        r("GET", "/ready", _ready, auth=False)  # the key only adds the checks' messages
        r("POST", "/jobs", _submit)
        r("GET", "/jobs", _list)
        r("GET", f"/jobs/{_JOB_ID}", _get)
        r("DELETE", f"/jobs/{_JOB_ID}", _delete)
        r("GET", f"/jobs/{_JOB_ID}/result", _result)
        r("POST", f"/jobs/{_JOB_ID}/retry", _retry)
        r("GET", "/templates", _templates)
        r("GET", "/templates/(?P<name>[^/]+)", _template)

    def _add(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        self.routes.append(_route(method, path, handler, auth=auth))

    @property
    def max_body(self) -> int:
        return self.kit.settings.max_request_bytes

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request of the v1 API (``request.path`` relative to its mount point)."""
        return self._answer(request, self.routes)

    def handle_metrics(self, request: HttpRequest) -> HttpResponse:
        """Answer ``GET /metrics`` (adapters mount it at the server's root): the Prometheus
        exposition, behind ``METRICS_TOKEN`` when it is set. Never raises."""
        return self._answer(request, self.root_routes)

    def _answer(self, request: HttpRequest, routes: list[Route]) -> HttpResponse:
        """Dispatch with a request id, a log context, one access-log line and the
        ``request_finished`` event; never raises."""
        started = time.monotonic()
        given = request.header("x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        request = attrs.evolve(request, request_id=request_id)
        declared = request.header("content-length")
        if declared and declared.isascii() and declared.strip().isdigit():
            request = attrs.evolve(request, body=_counted(request.body, int(declared)))
        with log_context(request_id=request_id, route="unmatched"):
            response = self._respond(request, routes)
            headers = [*response.headers, ("X-Request-ID", request_id)]
            response = attrs.evolve(response, headers=headers)
            self._log_access(request, response.status, time.monotonic() - started)
        return response

    def _respond(self, request: HttpRequest, routes: list[Route]) -> HttpResponse:
        try:
            return self._dispatch(request, routes)
        except ClientDisconnected:
            # Nobody reads this answer; the access line (status 499) says what happened.
            return HttpResponse.json(
                499, {"error": {"code": "invalid_request", "message": "client disconnected"}}
            )
        except ConvKitError as exc:
            if exc.status >= 500 and not isinstance(exc, ServiceUnavailable):
                log.error("request failed: %s", exc.message)
            return HttpResponse.error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return HttpResponse.json(
                500, {"error": {"code": "internal_error", "message": "internal error"}}
            )

    def _log_access(self, request: HttpRequest, status: int, duration: float) -> None:
        method, route = request.method.upper(), current_context()["route"]
        message = (
            "client disconnected before sending the whole body"
            if status == 499
            else f"{method} {route} {status}"
        )
        access_log.info(
            message,
            extra={
                "method": method,
                "status": status,
                "duration_s": round(duration, 4),
            },
        )
        call_event(
            self.kit.pm,
            "request_finished",
            method=method,
            route=route,
            status=status,
            duration_s=duration,
        )

    def _dispatch(self, request: HttpRequest, routes: list[Route]) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        method = request.method.upper()
        allowed: list[str] = []
        for route in routes:
            match = route.pattern.match(path)
            if not match:
                continue
            bind(route=route.template)
            if route.method != method and not (method == "HEAD" and route.method == "GET"):
                allowed.append(route.method)
                continue
            params = match.groupdict()
            # Only a well-formed id: a path is the client's text, and logs keep no such thing.
            if _UUID.match(params.get("job_id", "")):
                bind(job_id=params["job_id"])
            tenant = self._authenticate(request) if route.auth else None
            if tenant is not None:
                bind(user_id=tenant.name)
            return route.handler(self, request, tenant, params)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed here; use {', '.join(allowed)}", allow=", ".join(allowed)
            )
        raise NotFound(f"no route {request.path!r}", code="not_found")

    def _authenticate(self, request: HttpRequest) -> Tenant:
        key = request.header("x-api-key")
        auth = request.header("authorization")
        if key is None and auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer":
                key = token.strip()
        if not key:
            raise Unauthorized("send your key as 'Authorization: Bearer <key>' or 'X-API-Key'")
        tenant = self.kit.settings.tenant_for(key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant

    def optional_tenant(self, request: HttpRequest) -> Tenant | None:
        """The key's tenant, or None without a valid key (for key-free routes)."""
        try:
            return self._authenticate(request)
        except Unauthorized:
            return None

    def body_limit(self, content_type: str | None) -> int:
        """Largest body accepted for this content type (adapters spool at most this + 1)."""
        if _media_type(content_type) == "multipart/form-data":
            return self.kit.settings.max_upload_bytes + _MULTIPART_OVERHEAD
        return self.max_body

    def _check_declared_length(self, request: HttpRequest, limit: int, setting: str) -> None:
        declared = request.header("content-length")
        if declared is None:
            return
        if not re.fullmatch(r"[0-9]{1,19}", declared.strip()):
            raise InvalidRequest("invalid Content-Length", code="invalid_request")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes ({setting})")

    def read_body(self, request: HttpRequest) -> bytes:
        """The whole body, refused with 413 past MAX_REQUEST_BYTES without reading it all."""
        limit = self.max_body
        self._check_declared_length(request, limit, "MAX_REQUEST_BYTES")
        body = read_at_most(request.body, limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes (MAX_REQUEST_BYTES)")
        return body


def _route(method: str, path: str, handler: Handler, *, auth: bool = True) -> Route:
    template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
    return Route(method, re.compile(f"^{path}$"), handler, auth, template)


def _traceparent(api: HttpApi, request: HttpRequest) -> str | None:
    """The trace a new job continues: the span a tracing plugin sees active (the server's own
    span for this request), else the request's well-formed ``traceparent`` header."""
    value = api.kit.pm.hook.current_traceparent() or (request.header("traceparent") or "")
    value = str(value).strip()
    return value if _TRACEPARENT.match(value) else None


# -- handlers -------------------------------------------------------------------------------------


def _health(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    return HttpResponse.json(200, {"status": "ok"})


def _openapi(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    from convkit.http.openapi import openapi_bytes

    return HttpResponse(200, [("Content-Type", "application/json")], openapi_bytes())


#: Readiness checks whose failure alone keeps a replica in service (``/ready`` 200 "degraded").
#: The queue is shared by every replica and each submit answers its outage with a 503, so
#: taking replicas out of the load balancer would only stop reads and downloads as well.
_NOT_GATING = frozenset({"queue"})


def _ready(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    return ready_response(api.kit, details=api.optional_tenant(req) is not None)


def ready_response(kit: ConvKit, *, details: bool) -> HttpResponse:
    """The readiness answer (``GET /ready``, a worker's health server): 200 ``{"status":
    "ready", "checks": {name: "ok"}}``, or 503 with ``Retry-After``, an ``error`` naming the
    failing checks and ``checks``. Each check is ``"ok"``, else its message with ``details``
    (a valid key), else ``"failing"``."""
    checks = kit.ready(details=details)
    down = sorted(k for k, v in checks.items() if v != "ok")
    if any(name not in _NOT_GATING for name in down):
        return HttpResponse.json(
            503,
            {
                "error": {"code": "not_ready", "message": f"not ready: {', '.join(down)} down"},
                "checks": checks,
            },
            [("Retry-After", "5")],
        )
    return HttpResponse.json(200, {"status": "degraded" if down else "ready", "checks": checks})


def _submit(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    ctype = _media_type(req.header("content-type"))
    if ctype == "multipart/form-data":
        return _submit_upload(api, req, tenant)
    if ctype != "application/json":
        raise UnsupportedMediaType(
            "send a template job as application/json, or a document as multipart/form-data"
        )
    spec = parse_submit(api.read_body(req))
    job, created = api.kit.submit(
        tenant,
        spec,
        idempotency_key=req.header("idempotency-key"),
        request_id=req.request_id,
        traceparent=_traceparent(api, req),
    )
    return _accepted(req, job, created)


def _submit_upload(api: HttpApi, req: HttpRequest, tenant: Tenant) -> HttpResponse:
    from convkit.http.multipart import parse_upload

    settings = api.kit.settings
    api._check_declared_length(req, api.body_limit("multipart/form-data"), "MAX_UPLOAD_BYTES")
    with parse_upload(
        req.header("content-type") or "",
        req.body,
        max_file_bytes=settings.max_upload_bytes,
        max_field_bytes=settings.max_request_bytes,
    ) as form:
        job, created = api.kit.submit_upload(
            tenant,
            form.file,
            filename=form.filename,
            format=form.fields["format"],
            locale=form.fields.get("locale"),
            options=form.options,
            source_format=form.fields.get("source_format"),
            idempotency_key=req.header("idempotency-key"),
            request_id=req.request_id,
            traceparent=_traceparent(api, req),
        )
    return _accepted(req, job, created)


def _accepted(req: HttpRequest, job: Job, created: bool) -> HttpResponse:
    headers = [("Location", f"{req.base}/jobs/{job.id}")]
    if not created:
        headers.append(("Idempotent-Replayed", "true"))
    return HttpResponse.json(202, job_to_dict(job, req.base), headers)


def _list(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    raw = req.query.get("limit", "50")
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= 200:
        raise ValidationError("limit must be a whole number from 1 to 200", code="invalid_limit")
    # Absent means every state; present (even empty) must name one.
    status = req.query.get("status")
    states = [s.value for s in JobState]
    if status is not None and status not in states:
        raise ValidationError(f"status must be one of {', '.join(states)}", code="invalid_status")
    page = api.kit.list(
        tenant,
        status=None if status is None else JobState(status),
        limit=int(raw),
        cursor=req.query.get("cursor") or None,
    )
    return HttpResponse.json(
        200,
        {"jobs": [job_to_dict(j, req.base) for j in page.jobs], "next_cursor": page.next_cursor},
    )


def _get(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    return HttpResponse.json(200, job_to_dict(api.kit.get(tenant, p["job_id"]), req.base))


def _delete(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    api.kit.delete(tenant, p["job_id"])
    return HttpResponse(204)


def _retry(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    job = api.kit.retry_job(tenant, p["job_id"])
    return HttpResponse.json(
        202, job_to_dict(job, req.base), [("Location", f"{req.base}/jobs/{job.id}")]
    )


def _result(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    if api.kit.settings.result_url_mode == "redirect":
        # The client downloads straight from the object store, with no key of ours.
        location = api.kit.result_url(tenant, p["job_id"])
        return HttpResponse(307, [("Location", location), ("Cache-Control", "private, no-store")])
    job, chunks = api.kit.open_result(tenant, p["job_id"])
    assert job.result is not None
    headers = [
        ("Content-Type", job.result.media_type),
        ("Content-Length", str(job.result.size)),
        ("Content-Disposition", f'attachment; filename="{job.result.filename}"'),
        ("Cache-Control", "private, no-store"),
    ]
    if req.method.upper() == "HEAD":
        close = getattr(chunks, "close", None)
        if close:
            close()
        return HttpResponse(200, headers)
    return HttpResponse(200, headers, chunks)


def _templates(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    return HttpResponse.json(200, {"templates": api.kit.template_names(tenant)})


def _template(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    assert tenant is not None
    return HttpResponse.json(200, api.kit.template_info(tenant, p["name"]))


def _metrics(
    api: HttpApi, req: HttpRequest, tenant: Tenant | None, p: Mapping[str, str]
) -> HttpResponse:
    token = api.kit.settings.metrics_token
    if token:
        scheme, _, given = (req.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Unauthorized("send the metrics token as 'Authorization: Bearer <token>'")
    answer = api.kit.pm.hook.metrics_exposition(kit=api.kit)
    if answer is None:
        raise NotFound("no plugin serves metrics: pip install 'convkit[metrics]'")
    status, headers, body = answer
    return HttpResponse(status, headers, body)
