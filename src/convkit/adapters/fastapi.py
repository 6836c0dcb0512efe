"""FastAPI adapter: ``app.include_router(convkit.adapters.fastapi.router(kit))``.

Only translates: the async endpoint spools at most the API's body limit + 1 bytes of the body
(memory up to 1 MiB, then a temporary file), then runs the sync core in the thread pool.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import IO, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from convkit.adapters._common import METHODS, as_api, base_of
from convkit.http import API_PREFIX, HttpApi, HttpRequest, HttpResponse
from convkit.http.core import cut_off
from convkit.service import ConvKit

__all__ = ["create_app", "metrics_router", "router"]


async def _spool(request: Request, limit: int) -> tuple[IO[bytes], bool]:
    """The body spooled, up to ``limit`` bytes; True if the client left before its end."""
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115
    size = 0
    try:
        async for chunk in request.stream():
            spool.write(chunk)
            size += len(chunk)
            if size > limit:
                break  # enough to know it is too large; the rest is never read
    except ClientDisconnect:
        spool.seek(0)
        return spool, True
    spool.seek(0)
    return spool, False


def _to_native(resp: HttpResponse) -> Response:
    native: Response
    if isinstance(resp.body, bytes):
        native = Response(content=resp.body, status_code=resp.status)
    else:
        native = StreamingResponse(resp.body, status_code=resp.status)
    for name, value in resp.headers:
        native.headers[name] = value
    return native


def router(kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> APIRouter:
    """An APIRouter serving the v1 API under ``prefix``."""
    api = as_api(kit)
    r = APIRouter(prefix=prefix)

    async def endpoint(request: Request, path: str = "") -> Response:
        limit = api.body_limit(request.headers.get("content-type"))
        declared = request.headers.get("content-length", "")
        too_big = declared.isascii() and declared.isdigit() and int(declared) > limit
        body: IO[bytes] = io.BytesIO()
        read: Callable[[int], bytes] = body.read
        if not too_big and request.method not in ("GET", "HEAD", "DELETE"):
            body, disconnected = await _spool(request, limit + 1)
            read = cut_off(body.read) if disconnected else body.read
        sub = "/" + path
        neutral = HttpRequest(
            method=request.method,
            path=sub,
            headers=dict(request.headers),
            # The first value of a repeated parameter, as in every adapter.
            query={k: request.query_params.getlist(k)[0] for k in request.query_params},
            body=read,
            base=base_of(request.url.path, sub),
        )
        try:
            return _to_native(await run_in_threadpool(api.handle, neutral))
        finally:
            body.close()

    r.add_api_route("/{path:path}", endpoint, methods=list(METHODS), include_in_schema=False)
    return r


def metrics_router(kit: ConvKit | HttpApi) -> APIRouter:
    """An APIRouter serving ``GET /metrics`` (Prometheus); include it without a prefix to
    serve it at the app's root, as ``convkit serve`` does."""
    api = as_api(kit)
    r = APIRouter()

    async def endpoint(request: Request) -> Response:
        neutral = HttpRequest(
            method=request.method, path="/metrics", headers=dict(request.headers), base=""
        )
        return _to_native(await run_in_threadpool(api.handle_metrics, neutral))

    r.add_api_route("/metrics", endpoint, methods=list(METHODS), include_in_schema=False)
    return r


def create_app(kit: ConvKit, **kwargs: Any) -> FastAPI:
    """A FastAPI app with the v1 API and ``/metrics`` mounted (the `convkit serve` app)."""
    api = as_api(kit)
    app = FastAPI(title="convkit", openapi_url=None, docs_url=None, redoc_url=None, **kwargs)
    app.include_router(router(api))
    app.include_router(metrics_router(api))
    return app
