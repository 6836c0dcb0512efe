"""FastAPI adapter: ``app.include_router(convkit.adapters.fastapi.router(kit))``.

Only translates: the async endpoint reads at most MAX_REQUEST_BYTES + 1 of the body, then runs the
sync core in the thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from convkit.adapters._common import METHODS, as_api, base_of
from convkit.http import API_PREFIX, HttpApi, HttpRequest, HttpResponse
from convkit.service import ConvKit

__all__ = ["create_app", "router"]


async def _read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            break  # enough to know it is too large; the rest is never read
    return bytes(body)


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
        limit = api.max_body
        declared = request.headers.get("content-length", "")
        too_big = declared.isascii() and declared.isdigit() and int(declared) > limit
        body = (
            b""
            if too_big or request.method in ("GET", "HEAD", "DELETE")
            else (await _read_limited(request, limit))
        )
        sub = "/" + path
        neutral = HttpRequest(
            method=request.method,
            path=sub,
            headers=dict(request.headers),
            # The first value of a repeated parameter, as in every adapter.
            query={k: request.query_params.getlist(k)[0] for k in request.query_params},
            read_body=lambda n: body,
            base=base_of(request.url.path, sub),
        )
        return _to_native(await run_in_threadpool(api.handle, neutral))

    r.add_api_route("/{path:path}", endpoint, methods=list(METHODS), include_in_schema=False)
    return r


def create_app(kit: ConvKit, **kwargs: Any) -> FastAPI:
    """A FastAPI app with the v1 API mounted (the `convkit serve` app)."""
    app = FastAPI(title="convkit", openapi_url=None, docs_url=None, redoc_url=None, **kwargs)
    app.include_router(router(kit))
    return app
