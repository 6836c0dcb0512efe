"""Django adapter: ``urlpatterns = [path("", include(convkit.adapters.django.urls(kit)))]``."""

from __future__ import annotations

import itertools
import secrets
import sys
import types
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest as DjangoRequest
from django.http import HttpResponse as DjangoResponse
from django.http import StreamingHttpResponse
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt

from convkit.adapters._common import as_api, base_of, guarded
from convkit.errors import ConfigError
from convkit.http import API_PREFIX, HttpApi, HttpRequest, HttpResponse
from convkit.service import ConvKit

__all__ = ["UrlconfMiddleware", "create_wsgi_app", "metrics_urls", "urls"]

_URLCONF_KEY = "convkit.urlconf"
_MIDDLEWARE = "convkit.adapters.django.UrlconfMiddleware"
_module_ids = itertools.count()


def _body_reader(request: DjangoRequest) -> Callable[[int], bytes]:
    if not request.META.get("CONTENT_LENGTH") and request.META.get("wsgi.input_terminated"):
        # Chunked upload: Django's request.read() stops at CONTENT_LENGTH (absent: 0 bytes);
        # the server promises the raw stream ends with the body, so read that, bounded.
        stream: Any = request.META["wsgi.input"]
        raw: Callable[[int], bytes] = stream.read
        return guarded(raw, (OSError,))
    # Django raises UnreadablePostError, an OSError, when the client went away.
    reader: Callable[[int], bytes] = request.read
    return guarded(reader, (OSError,))


def _to_native(resp: HttpResponse) -> DjangoResponse | StreamingHttpResponse:
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
            headers=dict(request.headers.items()),
            # The first value of a repeated parameter, as in every adapter.
            query={k: request.GET.getlist(k)[0] for k in request.GET},
            body=_body_reader(request),
            base=base_of(request.path, sub),
        )
        return _to_native(api.handle(neutral))

    return [re_path(rf"^{root}(?:/(?P<path>.*))?$", view, name="convkit-api")]


def metrics_urls(kit: ConvKit | HttpApi) -> list[URLPattern]:
    """The URL pattern serving ``GET /metrics`` (Prometheus); add it to your root urlpatterns
    to serve it at the site's root, as ``convkit serve --framework django`` does."""
    api = as_api(kit)

    @csrf_exempt
    def view(request: DjangoRequest) -> DjangoResponse | StreamingHttpResponse:
        neutral = HttpRequest(
            method=request.method or "GET",
            path="/metrics",
            headers=dict(request.headers.items()),
            base="",
        )
        return _to_native(api.handle_metrics(neutral))

    return [re_path(r"^metrics$", view, name="convkit-metrics")]


class UrlconfMiddleware:
    """Routes each request to the urlconf of the :func:`create_wsgi_app` app that received it,
    so several convkit apps can live in one process."""

    def __init__(self, get_response: Callable[[DjangoRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: DjangoRequest) -> Any:
        urlconf = request.META.get(_URLCONF_KEY)
        if urlconf:
            request.urlconf = urlconf
        return self.get_response(request)


def create_wsgi_app(kit: ConvKit, **settings: Any) -> Any:
    """A minimal Django project serving the v1 API (the `convkit serve --framework django` app).

    For an existing Django project, mount :func:`urls` in its urlpatterns instead: Django's
    settings exist once per process, so this refuses to run after someone else configured them.
    """
    import django
    from django.conf import settings as dj_settings
    from django.core.wsgi import get_wsgi_application

    module = types.ModuleType(f"convkit_django_urls_{next(_module_ids)}")
    api = as_api(kit)
    module.urlpatterns = [*urls(api), *metrics_urls(api)]  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    if not dj_settings.configured:
        dj_settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=module.__name__,
            SECRET_KEY=secrets.token_urlsafe(32),
            MIDDLEWARE=[_MIDDLEWARE],
            INSTALLED_APPS=[],
            USE_TZ=True,
            **settings,
        )
        django.setup()
    elif _MIDDLEWARE not in dj_settings.MIDDLEWARE:
        raise ConfigError(
            "Django is already configured: mount convkit.adapters.django.urls(kit) in your "
            "project's urlpatterns instead of calling create_wsgi_app"
        )
    handler = get_wsgi_application()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[_URLCONF_KEY] = module.__name__
        return handler(environ, start_response)

    return app
