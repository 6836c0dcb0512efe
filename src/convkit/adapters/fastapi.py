"""FastAPI adapter: ``app.include_router(convkit.adapters.fastapi.router(kit))``.

Only translates: the async endpoint spools at most the API's body limit + 1 bytes of the body
(memory up to 1 MiB, then a temporary file), then runs the sync core in the thread pool.
"""

from __future__ import annotations

import io
import tempfile
from typing import IO, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from convkit.adapters._common import METHODS, as_api, base_of
from convkit.http import API_PREFIX, HttpApi, HttpRequest, HttpResponse
from convkit.service import ConvKit

__all__ = ["create_app", "router"]


async def _spool(request: Request, limit: int) -> IO[bytes]:
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115
    size = 0
    async for chunk in request.stream():
        spool.write(chunk)
        size += len(chunk)
        if size > limit:
            break  # enough to know it is too large; the rest is never read
    spool.seek(0)
    return spool


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
        body: IO[bytes] = (
            io.BytesIO()
            if too_big or request.method in ("GET", "HEAD", "DELETE")
            else (await _spool(request, limit + 1))
        )
        sub = "/" + path
        neutral = HttpRequest(
            method=request.method,
            path=sub,
            headers=dict(request.headers),
            # The first value of a repeated parameter, as in every adapter.
            query={k: request.query_params.getlist(k)[0] for k in request.query_params},
            body=body.read,
            base=base_of(request.url.path, sub),
        )
        try:
            return _to_native(await run_in_threadpool(api.handle, neutral))
        finally:
            body.close()

    r.add_api_route("/{path:path}", endpoint, methods=list(METHODS), include_in_schema=False)
    return r


def create_app(kit: ConvKit, **kwargs: Any) -> FastAPI:
    """A FastAPI app with the v1 API mounted (the `convkit serve` app)."""
    app = FastAPI(title="convkit", openapi_url=None, docs_url=None, redoc_url=None, **kwargs)
    app.include_router(router(kit))
    return app
