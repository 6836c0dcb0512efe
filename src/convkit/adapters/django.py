"""Django adapter: ``urlpatterns = [path("", include(convkit.adapters.django.urls(kit)))]``."""

from __future__ import annotations

import secrets
import sys
import types
from typing import Any

from django.http import HttpRequest as DjangoRequest
from django.http import HttpResponse as DjangoResponse
from django.http import StreamingHttpResponse
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt

from convkit.adapters._common import as_api, base_of, read_limited
from convkit.http import API_PREFIX, HttpApi, HttpRequest
from convkit.service import ConvKit

__all__ = ["create_wsgi_app", "urls"]


def _headers(request: DjangoRequest) -> dict[str, str]:
    return {k: v for k, v in request.headers.items()}


def urls(kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> list[URLPattern]:
    """URL patterns serving the v1 API under ``prefix`` (no leading slash needed)."""
    api = as_api(kit)
    root = prefix.strip("/")

    @csrf_exempt
    def view(request: DjangoRequest, path: str = "") -> DjangoResponse | StreamingHttpResponse:
        sub = "/" + (path or "").lstrip("/")
        neutral = HttpRequest(
            method=request.method or "GET",
            path=sub,
            headers=_headers(request),
            query={k: request.GET[k] for k in request.GET},
            read_body=lambda n: read_limited(request.read, n),
            base=base_of(request.path, sub),
        )
        resp = api.handle(neutral)
        native: DjangoResponse | StreamingHttpResponse
        if isinstance(resp.body, bytes):
            native = DjangoResponse(resp.body, status=resp.status)
        else:
            native = StreamingHttpResponse(resp.body, status=resp.status)
        if "Content-Type" in native.headers:
            del native.headers["Content-Type"]
        for key, value in resp.headers:
            native[key] = value
        return native

    return [re_path(rf"^{root}(?:/(?P<path>.*))?$", view, name="convkit-api")]


def create_wsgi_app(kit: ConvKit, **settings: Any) -> Any:
    """A minimal Django project serving the v1 API (the `convkit serve --framework django` app)."""
    import django
    from django.conf import settings as dj_settings
    from django.core.wsgi import get_wsgi_application

    module = types.ModuleType("convkit_django_urls")
    module.urlpatterns = urls(kit)  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    if not dj_settings.configured:
        dj_settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=module.__name__,
            SECRET_KEY=secrets.token_urlsafe(32),
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
            **settings,
        )
        django.setup()
    return get_wsgi_application()
