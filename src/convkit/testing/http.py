"""HTTP clients over each framework's real test client, and the v1 API contract suite.

:class:`HttpClient` is one small interface over three real test clients: FastAPI's
(:class:`starlette.testclient.TestClient`), Flask's (``app.test_client()``) and Django's
(:class:`django.test.Client`). Each one mounts the v1 API of a :class:`~convkit.ConvKit` with the
matching adapter in :mod:`convkit.adapters` (and ``GET /metrics`` at the root, as ``convkit
serve`` does), so a test written once against :class:`HttpClient`
runs through every framework. No framework is imported until a client of that framework is built,
so ``import convkit.testing.http`` works with none of them installed.

:class:`HttpContract` is a mix-in of contract tests for the API. Subclass it in a ``Test*`` class
and provide two fixtures::

    class TestMyAdapter(HttpContract):
        @pytest.fixture
        def kit(self, tmp_path) -> Iterator[ConvKit]:
            write_contract_templates(tmp_path / "templates")
            kit = ConvKit.from_settings(contract_settings(tmp_path / "templates"), ...)
            yield kit
            kit.close()

        @pytest.fixture
        def http_client(self, kit) -> Iterator[HttpClient]:
            with make_client("flask", kit) as client:
                yield client

The kit must use :data:`CONTRACT_KEYS` (see :func:`contract_settings`), hold the templates of
:data:`CONTRACT_TEMPLATES`, and its queue must *not* be started: the tests run jobs themselves
with ``kit.run_job`` (one test starts a :class:`convkit.worker.Worker`).
"""

from __future__ import annotations

import abc
import json as jsonlib
import re
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from convkit.http import API_PREFIX, HttpApi
from convkit.settings import Settings, Tenant

if TYPE_CHECKING:
    from convkit.service import ConvKit
    from convkit.testing.queue import OutageQueue

__all__ = [
    "ALICE_KEY",
    "BOB_KEY",
    "CONTRACT_ALLOWED_TEMPLATES",
    "CONTRACT_KEYS",
    "CONTRACT_MAX_REQUEST_BYTES",
    "CONTRACT_TEMPLATES",
    "DEADLINE_S",
    "FRAMEWORKS",
    "DjangoClient",
    "FastAPIClient",
    "FlaskClient",
    "Headers",
    "HttpClient",
    "HttpContract",
    "Response",
    "assert_error",
    "auth",
    "contract_settings",
    "make_client",
    "wait_for_job",
    "write_contract_templates",
]

#: The frameworks :func:`make_client` knows, in the order tests usually parametrize them.
FRAMEWORKS: tuple[str, ...] = ("fastapi", "flask", "django")

# -- what the contract expects of the kit ----------------------------------------------------------

#: Tenant ``alice``: may use every globally allowed template.
ALICE_KEY = "contract-alice-key"
#: Tenant ``bob``: may use ``greeting`` and ``page`` only.
BOB_KEY = "contract-bob-key"

CONTRACT_KEYS: Mapping[str, Tenant] = types.MappingProxyType(
    {
        ALICE_KEY: Tenant("alice"),
        BOB_KEY: Tenant("bob", frozenset({"greeting", "page"})),
    }
)

#: The global ``ALLOWED_TEMPLATES`` list: every contract template except ``hidden``, plus
#: ``absent``, which is allowed but has no file (so submitting it is template_not_found).
CONTRACT_ALLOWED_TEMPLATES = frozenset({"greeting", "page", "broken", "boom", "absent"})

#: ``MAX_REQUEST_BYTES`` of the contract kit (64 KiB).
CONTRACT_MAX_REQUEST_BYTES = 64 * 1024

#: File name -> source of the templates the contract submits.
CONTRACT_TEMPLATES: Mapping[str, str] = types.MappingProxyType(
    {
        # Renders; the tests check the output byte for byte.
        "greeting.txt": "Hello {{ name }}!\n",
        # HTML with a loop; converted to PDF by the end-to-end tests.
        "page.html": (
            "<!DOCTYPE html>\n"
            '<html><head><meta charset="utf-8"><title>{{ title }}</title></head>\n'
            "<body>\n"
            "<h1>{{ title }}</h1>\n"
            "<ul>\n"
            "{% for item in items %}<li>{{ item.name }}: {{ item.qty }}</li>\n"
            "{% endfor %}</ul>\n"
            "</body></html>\n"
        ),
        # A syntax error: refused at submission (the service compiles the template then).
        "broken.txt": "Hello {{ name \n",
        # Compiles, but fails when rendered: the job fails with template_error.
        "boom.txt": "Result: {{ 1 / 0 }}\n",
        # Exists, but is not in the global allowed list.
        "hidden.txt": "Nobody may render this.\n",
    }
)


def write_contract_templates(directory: str | Path) -> Path:
    """Write :data:`CONTRACT_TEMPLATES` into ``directory`` (created if missing); return it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, source in CONTRACT_TEMPLATES.items():
        (path / name).write_text(source, encoding="utf-8")
    return path


def contract_settings(templates_dir: str | Path, **overrides: Any) -> Settings:
    """Settings for a contract kit: the contract keys, the global allowed list, 64 KiB bodies."""
    values: dict[str, Any] = {
        "api_keys": dict(CONTRACT_KEYS),
        "allowed_templates": CONTRACT_ALLOWED_TEMPLATES,
        "templates_dir": str(templates_dir),
        "max_request_bytes": CONTRACT_MAX_REQUEST_BYTES,
        **overrides,
    }
    return Settings(**values)


# -- responses -------------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive lookup; a repeated header reads as its values joined
    with ``", "`` (:meth:`get_all` gives them one by one)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple((str(k), str(v)) for k, v in items)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        wanted = name.lower()
        return [v for k, v in self._items if k.lower() == wanted]

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for k, _ in self._items:
            seen.setdefault(k.lower(), None)
        return iter(seen)

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._items})

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _to_headers(value: Headers | Mapping[str, str] | Iterable[tuple[str, str]]) -> Headers:
    if isinstance(value, Headers):
        return value
    if isinstance(value, Mapping):
        return Headers(value.items())
    return Headers(value)


@attrs.frozen
class Response:
    """What a test client got back: status, headers (case-insensitive) and the whole body."""

    status: int
    headers: Headers = attrs.field(factory=Headers, converter=_to_headers)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return jsonlib.loads(self.body)

    @property
    def media_type(self) -> str:
        """The ``Content-Type`` without parameters, lower-case ("" when absent)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


# -- clients ---------------------------------------------------------------------------------------


HeaderArg = Mapping[str, str] | Iterable[tuple[str, str]] | None


class HttpClient(abc.ABC):
    """Sends requests to the v1 API mounted under :attr:`prefix` on one framework's app.

    Paths are full URL paths (``client.url("/jobs")`` builds one), may carry a query string and
    are sent as given, so ``Location`` and ``result_url`` values can be followed as they are.
    """

    #: The framework's name, as in :data:`FRAMEWORKS`.
    framework: ClassVar[str]
    #: Whether :meth:`request_chunked` can send a body without ``Content-Length``.
    supports_chunked: ClassVar[bool] = False

    def __init__(self, kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> None:
        self.kit = kit
        self.prefix = "/" + prefix.strip("/")

    def url(self, sub_path: str) -> str:
        """``sub_path`` ("/jobs") under the mount point ("/api/v1/jobs")."""
        return self.prefix + sub_path

    @abc.abstractmethod
    def _send(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response:
        """Send one request through the framework's test client."""

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: HeaderArg = None,
        json: Any = None,
        body: bytes | None = None,
    ) -> Response:
        """Send ``method path``. ``json`` is encoded and, unless ``headers`` name one, sent as
        ``application/json``; ``body`` is sent as raw bytes (give one of them, or neither)."""
        if json is not None and body is not None:
            raise TypeError("give json or body, not both")
        items = _header_items(headers)
        if json is not None:
            body = jsonlib.dumps(json).encode()
            if not any(k.lower() == "content-type" for k, _ in items):
                items.append(("Content-Type", "application/json"))
        return self._send(method.upper(), path, items, body)

    def request_chunked(
        self, method: str, path: str, chunks: Iterable[bytes], *, headers: HeaderArg = None
    ) -> Response:
        """Send the body as ``chunks`` with ``Transfer-Encoding: chunked`` and no
        ``Content-Length``; only where :attr:`supports_chunked` is true."""
        raise NotImplementedError(f"{self.framework}: no chunked request bodies")

    def get(self, path: str, **kwargs: Any) -> Response:
        """``GET path``."""
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Response:
        """``HEAD path``."""
        return self.request("HEAD", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        """``POST path``."""
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        """``DELETE path``."""
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:  # noqa: B027  # optional hook
        """Release the test client (idempotent)."""

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.prefix}>"


def _header_items(headers: HeaderArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


class FastAPIClient(HttpClient):
    """A FastAPI app with :func:`convkit.adapters.fastapi.router`, driven by httpx's
    ``ASGITransport`` on an event loop of its own (an anyio blocking portal), which is what
    Starlette's ``TestClient`` does too; app exceptions propagate.

    (Starlette's own ``TestClient`` is not used: from Starlette 1.10 it warns when run on
    ``httpx`` rather than ``httpx2``.)
    """

    framework = "fastapi"
    supports_chunked = True

    def __init__(self, kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> None:
        super().__init__(kit, prefix=prefix)
        import contextlib

        import anyio.from_thread
        import httpx
        from fastapi import FastAPI

        from convkit.adapters.fastapi import metrics_router, router

        self.app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        self.app.include_router(router(kit, prefix=self.prefix))
        self.app.include_router(metrics_router(kit))
        self._stack = contextlib.ExitStack()
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=True)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self._closed = False

    async def _arequest(
        self, method: str, path: str, headers: list[tuple[str, str]], content: Any
    ) -> Response:
        r = await self._client.request(method, path, headers=headers, content=content)
        return Response(r.status_code, r.headers.multi_items(), r.content)

    def _send(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response:
        result: Response = self._portal.call(self._arequest, method, path, headers, body)
        return result

    def request_chunked(
        self, method: str, path: str, chunks: Iterable[bytes], *, headers: HeaderArg = None
    ) -> Response:
        """httpx sends an async-iterator body chunked, without ``Content-Length``."""
        parts = list(chunks)

        async def stream() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        result: Response = self._portal.call(
            self._arequest, method.upper(), path, _header_items(headers), stream()
        )
        return result

    def close(self) -> None:
        """Close the httpx client and stop the event loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._stack.close()


class FlaskClient(HttpClient):
    """A Flask app with :func:`convkit.adapters.flask.blueprint`, driven by
    ``app.test_client()`` (Werkzeug's WSGI test client)."""

    framework = "flask"
    supports_chunked = True

    def __init__(self, kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> None:
        super().__init__(kit, prefix=prefix)
        from flask import Flask

        from convkit.adapters.flask import blueprint, metrics_blueprint

        self.app = Flask(f"convkit_test_{id(self):x}")
        self.app.config["TESTING"] = True
        self.app.register_blueprint(blueprint(kit, url_prefix=self.prefix))
        self.app.register_blueprint(metrics_blueprint(kit))
        self._client = self.app.test_client()

    def _send(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response:
        r = self._client.open(path, method=method, headers=headers, data=body)
        try:
            return Response(r.status_code, list(r.headers.items()), r.get_data())
        finally:
            r.close()

    def request_chunked(
        self, method: str, path: str, chunks: Iterable[bytes], *, headers: HeaderArg = None
    ) -> Response:
        """Build the environ a WSGI server gives a chunked request: no ``CONTENT_LENGTH``,
        ``Transfer-Encoding: chunked`` and ``wsgi.input_terminated`` (the server de-chunked)."""
        from werkzeug.test import EnvironBuilder
        from werkzeug.wrappers import Request

        builder = EnvironBuilder(
            path=path,
            method=method.upper(),
            headers=_header_items(headers),
            data=b"".join(chunks),
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
        r = self._client.open(Request(environ))
        try:
            return Response(r.status_code, list(r.headers.items()), r.get_data())
        finally:
            r.close()


# Django reads its settings once per process, so every DjangoClient shares one URLconf module
# whose ``urlpatterns`` are swapped when a client opens and closes.
_DJANGO_URLCONF = "convkit_testing_http_urlconf"
_django_lock = threading.Lock()
_django_active: list[DjangoClient] = []


def _django_urlconf() -> types.ModuleType:
    module = sys.modules.get(_DJANGO_URLCONF)
    if module is None:
        module = types.ModuleType(_DJANGO_URLCONF, "URLconf of convkit.testing.http.DjangoClient")
        module.urlpatterns = []  # type: ignore[attr-defined]
        sys.modules[_DJANGO_URLCONF] = module
    return module


def _ensure_django() -> None:
    """Configure minimal, in-memory Django settings once (unless the process already did)."""
    import django
    from django.apps import apps
    from django.conf import settings

    _django_urlconf()
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="convkit-testing-not-a-secret",  # noqa: S106  # test-only settings
            ALLOWED_HOSTS=["testserver", "localhost", "127.0.0.1"],
            ROOT_URLCONF=_DJANGO_URLCONF,
            # The adapter's own middleware, so create_wsgi_app works in the same process.
            MIDDLEWARE=["convkit.adapters.django.UrlconfMiddleware"],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
        )
    if not apps.ready:
        django.setup()


class DjangoClient(HttpClient):
    """:func:`convkit.adapters.django.urls` as the ROOT_URLCONF, driven by
    :class:`django.test.Client`.

    Django's settings exist once per process: the first client configures minimal ones (no
    database, no middleware) unless the process configured Django already, in which case the
    client overrides ``ROOT_URLCONF`` while it is open. One DjangoClient may be open at a time.
    """

    framework = "django"
    supports_chunked = True

    def __init__(self, kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> None:
        super().__init__(kit, prefix=prefix)
        _ensure_django()
        from django.conf import settings
        from django.test import Client
        from django.test.utils import override_settings
        from django.urls import clear_url_caches

        from convkit.adapters.django import metrics_urls, urls

        with _django_lock:
            if _django_active:
                raise RuntimeError(
                    f"a DjangoClient is already open ({_django_active[0]!r}); close it first"
                )
            patterns = [*urls(kit, prefix=self.prefix), *metrics_urls(kit)]
            _django_urlconf().urlpatterns = patterns  # type: ignore[attr-defined]
            _django_active.append(self)
        self._override: Any = None
        if settings.ROOT_URLCONF != _DJANGO_URLCONF:
            self._override = override_settings(ROOT_URLCONF=_DJANGO_URLCONF)
            self._override.enable()
        clear_url_caches()
        self._client = Client(raise_request_exception=True)
        self._closed = False

    def _send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        extra: Mapping[str, Any] | None = None,
    ) -> Response:
        from django.test.client import FakePayload

        parts = urllib.parse.urlsplit(path)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            # WSGI carries the decoded path as latin-1 text of its UTF-8 bytes.
            "PATH_INFO": urllib.parse.unquote_to_bytes(parts.path).decode("iso-8859-1"),
            "QUERY_STRING": parts.query,
        }
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = value
        if body is not None:
            environ["wsgi.input"] = FakePayload(body)
            environ.setdefault("CONTENT_LENGTH", str(len(body)))
        environ.update(extra or {})
        r = self._client.request(**environ)
        try:
            content = b"".join(r.streaming_content) if r.streaming else r.content
            return Response(r.status_code, list(r.headers.items()), content)
        finally:
            r.close()

    def request_chunked(
        self, method: str, path: str, chunks: Iterable[bytes], *, headers: HeaderArg = None
    ) -> Response:
        """Send the environ a WSGI server gives a chunked request: no ``CONTENT_LENGTH``,
        ``Transfer-Encoding: chunked`` and ``wsgi.input_terminated`` (the server de-chunked)."""
        import io

        items = [(k, v) for k, v in _header_items(headers) if k.lower() != "content-length"]
        items.append(("Transfer-Encoding", "chunked"))
        return self._send(
            method.upper(),
            path,
            items,
            None,
            extra={
                "wsgi.input": io.BytesIO(b"".join(chunks)),
                "wsgi.input_terminated": True,
            },
        )

    def close(self) -> None:
        """Unmount the API and give the URLconf back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        from django.urls import clear_url_caches

        with _django_lock:
            _django_urlconf().urlpatterns = []  # type: ignore[attr-defined]
            if self in _django_active:
                _django_active.remove(self)
        if self._override is not None:
            self._override.disable()
        clear_url_caches()


_CLIENTS: dict[str, type[HttpClient]] = {
    "fastapi": FastAPIClient,
    "flask": FlaskClient,
    "django": DjangoClient,
}


def make_client(framework: str, kit: ConvKit | HttpApi, *, prefix: str = API_PREFIX) -> HttpClient:
    """A client for ``framework`` (one of :data:`FRAMEWORKS`) serving ``kit`` under ``prefix``."""
    try:
        cls = _CLIENTS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; use one of {FRAMEWORKS}") from None
    return cls(kit, prefix=prefix)


# -- polling ---------------------------------------------------------------------------------------

#: How long a contract test waits for a job to finish before failing.
DEADLINE_S = 120.0


def wait_for_job(
    client: HttpClient, location: str, *, key: str, timeout: float = DEADLINE_S
) -> dict[str, Any]:
    """Poll ``GET location`` until the job is succeeded or failed; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(location, headers=auth(key))
        assert r.status == 200, r.body
        job: dict[str, Any] = r.json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} after {timeout:g}s: {job}")
        time.sleep(0.05)


def auth(key: str) -> dict[str, str]:
    """The ``Authorization: Bearer`` header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


# -- the contract ----------------------------------------------------------------------------------

_JOB_FIELDS = {
    "id",
    "status",
    "template",
    "format",
    "locale",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "error",
    "result_url",
}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_GREETING = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}


def _tenant(kit: ConvKit, key: str) -> Tenant:
    tenant = kit.settings.tenant_for(key)
    assert tenant is not None, f"the kit has no tenant for {key!r}: use contract_settings()"
    return tenant


def assert_error(r: Response, status: int, code: str | None = None) -> dict[str, str]:
    """``r`` is a JSON ``{"error": {"code", "message"}}`` with ``status`` (and ``code``)."""
    assert r.status == status, (r.status, r.body)
    assert r.media_type == "application/json", r.headers
    payload = r.json()
    assert set(payload) >= {"error"}, payload
    error = payload["error"]
    assert isinstance(error, dict), payload
    assert isinstance(error.get("code"), str), payload
    assert isinstance(error.get("message"), str), payload
    assert error["message"], payload
    if code is not None:
        assert error["code"] == code, payload
    return error


def assert_documented(r: Response, method: str, path: str) -> None:
    """``r``'s JSON body matches what the OpenAPI document gives for ``method path`` and
    ``r.status``, and every top-level field of it is one the schema names."""
    import jsonschema

    from convkit.http.openapi import openapi_document

    doc = openapi_document()
    answer = doc["paths"][path][method.lower()]["responses"][str(r.status)]
    ref = answer["content"]["application/json"]["schema"]["$ref"]
    validator = jsonschema.Draft202012Validator({"$ref": ref, "components": doc["components"]})
    validator.validate(r.json())
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(r.json()) <= set(schema["properties"]), (ref, r.body)


class HttpContract:
    """Contract tests of the v1 HTTP API, run through one adapter.

    Fixtures: ``kit`` (a :class:`~convkit.ConvKit` built with :func:`contract_settings`, holding
    :data:`CONTRACT_TEMPLATES`, queue not started) and ``http_client`` (an :class:`HttpClient`
    serving that kit on a fresh app).
    """

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def submit(
        client: HttpClient,
        payload: Any = None,
        *,
        key: str = ALICE_KEY,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """POST a job as ``key`` (JSON ``payload``, or raw ``body`` as application/json)."""
        hdrs = {**auth(key), **(headers or {})}
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
            return client.post(client.url("/jobs"), headers=hdrs, body=body)
        return client.post(
            client.url("/jobs"), headers=hdrs, json=_GREETING if payload is None else payload
        )

    @staticmethod
    def assert_nothing_stored(kit: ConvKit, key: str = ALICE_KEY) -> None:
        """The tenant of ``key`` has no job rows."""
        assert kit.list(_tenant(kit, key), limit=200).jobs == []

    def submit_and_run(
        self, client: HttpClient, kit: ConvKit, payload: Any = None, key: str = ALICE_KEY
    ) -> dict[str, Any]:
        """Submit, run the job in this thread, return the job JSON after the run."""
        r = self.submit(client, payload, key=key)
        assert r.status == 202, r.body
        kit.run_job(r.json()["id"])
        got = client.get(r.headers["Location"], headers=auth(key))
        assert got.status == 200, got.body
        job: dict[str, Any] = got.json()
        return job

    # -- health, openapi, ready ---------------------------------------------------------------
    def test_health_needs_no_key(self, http_client: HttpClient) -> None:
        """GET /health answers 200 {"status": "ok"} without any key."""
        r = http_client.get(http_client.url("/health"))
        assert r.status == 200
        assert r.media_type == "application/json"
        assert r.json() == {"status": "ok"}

    def test_openapi_needs_no_key_and_is_the_canonical_document(
        self, http_client: HttpClient
    ) -> None:
        """GET /openapi.json answers the canonical bytes of the OpenAPI 3.1 document."""
        from convkit.http.openapi import openapi_bytes

        r = http_client.get(http_client.url("/openapi.json"))
        assert r.status == 200
        assert r.media_type == "application/json"
        assert r.body == openapi_bytes()
        assert r.json()["openapi"].startswith("3.1")

    def test_ready_reports_every_check(self, http_client: HttpClient) -> None:
        """GET /ready with a key answers 200 with an "ok" check per dependency."""
        r = http_client.get(http_client.url("/ready"), headers=auth(ALICE_KEY))
        assert r.status == 200, r.body
        payload = r.json()
        assert_documented(r, "GET", "/ready")
        assert payload["status"] == "ready"
        assert payload["checks"] == {
            "database": "ok",
            "queue": "ok",
            "storage": "ok",
            "converter": "ok",
        }

    @pytest.mark.parametrize("key", [None, "not-a-configured-key"])
    def test_ready_without_a_key_names_the_checks(
        self, http_client: HttpClient, key: str | None
    ) -> None:
        """GET /ready without a (valid) key answers like a probe: 200, each check "ok"."""
        r = http_client.get(http_client.url("/ready"), headers=auth(key) if key else None)
        assert r.status == 200, r.body
        assert r.json() == {
            "status": "ready",
            "checks": {"database": "ok", "queue": "ok", "storage": "ok", "converter": "ok"},
        }

    def test_ready_shows_a_failing_check_and_its_message_only_to_a_key(
        self, http_client: HttpClient, kit: ConvKit, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing check: 503 with Retry-After naming it; its message only with a key."""
        from convkit.errors import ServiceUnavailable

        def down() -> None:
            raise ServiceUnavailable("volume /srv/secret-mount is gone")

        monkeypatch.setattr(kit.storage, "check", down)  # an injected fault
        keyless = http_client.get(http_client.url("/ready"))
        error = assert_error(keyless, 503, "not_ready")
        assert_documented(keyless, "GET", "/ready")
        assert "storage" in error["message"]
        assert keyless.headers["Retry-After"]
        assert keyless.json()["checks"] == {
            "database": "ok",
            "queue": "ok",
            "storage": "failing",
            "converter": "ok",
        }
        assert b"secret-mount" not in keyless.body
        keyed = http_client.get(http_client.url("/ready"), headers=auth(ALICE_KEY))
        assert_error(keyed, 503, "not_ready")
        assert keyed.json()["checks"]["storage"] == "volume /srv/secret-mount is gone"

    def test_ready_of_an_api_only_process_leaves_the_converter_out(
        self, http_client: HttpClient, kit: ConvKit, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A process that runs no jobs (``kit.runs_jobs`` False) does not check the converter:
        a broken converter makes only a job-running process unready."""
        from convkit.errors import ServiceUnavailable

        def broken() -> None:
            raise ServiceUnavailable("soffice is missing")

        for converter in kit.converters:
            monkeypatch.setattr(converter, "check", broken)  # an injected fault
        r = http_client.get(http_client.url("/ready"))
        assert r.status == 503 and r.json()["checks"]["converter"] == "failing", r.body
        monkeypatch.setattr(kit, "runs_jobs", False)
        r = http_client.get(http_client.url("/ready"))
        assert r.status == 200, r.body
        assert r.json()["checks"] == {"database": "ok", "queue": "ok", "storage": "ok"}

    # -- the queue's broker is down -----------------------------------------------------------
    @staticmethod
    def break_queue(
        kit: ConvKit, monkeypatch: pytest.MonkeyPatch, *, check_passes: bool = False
    ) -> OutageQueue:
        """Put the kit's queue behind an :class:`~convkit.testing.queue.OutageQueue` (down until
        its ``down`` is set to False; the original comes back after the test)."""
        from convkit.testing.queue import OutageQueue

        outage = OutageQueue(kit.queue, check_passes=check_passes)
        monkeypatch.setattr(kit, "queue", outage)
        return outage

    @pytest.mark.parametrize("check_passes", [False, True], ids=["check-fails", "enqueue-fails"])
    def test_submit_while_queue_down_is_503_then_the_same_key_creates_the_job(
        self,
        http_client: HttpClient,
        kit: ConvKit,
        monkeypatch: pytest.MonkeyPatch,
        check_passes: bool,
    ) -> None:
        """Broker down: 503 ``service_unavailable`` with ``Retry-After`` in seconds and no row
        (also when the enqueue fails after the row was written); once the broker is back, a
        retry with the same ``Idempotency-Key`` creates the job."""
        outage = self.break_queue(kit, monkeypatch, check_passes=check_passes)
        key = {"Idempotency-Key": "after-the-outage"}
        r = self.submit(http_client, headers=key)
        assert_error(r, 503, "service_unavailable")
        assert int(r.headers["Retry-After"]) > 0
        self.assert_nothing_stored(kit)
        outage.down = False
        again = self.submit(http_client, headers=key)
        assert again.status == 202, again.body
        assert "Idempotent-Replayed" not in again.headers
        assert len(kit.list(_tenant(kit, ALICE_KEY), limit=200).jobs) == 1

    def test_ready_stays_200_when_only_the_queue_is_down(
        self, http_client: HttpClient, kit: ConvKit, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/ready lists the failing queue but answers 200 ``degraded``: the replica still serves
        reads and downloads, and submits answer 503 themselves."""
        self.break_queue(kit, monkeypatch)
        r = http_client.get(http_client.url("/ready"), headers=auth(ALICE_KEY))
        assert r.status == 200, r.body
        payload = r.json()
        assert payload["status"] == "degraded"
        assert payload["checks"]["queue"].startswith("queue unavailable")
        assert {k: v for k, v in payload["checks"].items() if k != "queue"} == {
            "database": "ok",
            "storage": "ok",
            "converter": "ok",
        }

    # -- auth ---------------------------------------------------------------------------------
    def test_missing_key_is_401_with_challenge(self, http_client: HttpClient) -> None:
        """No key: 401 JSON error with a Bearer ``WWW-Authenticate`` challenge."""
        r = http_client.get(http_client.url("/jobs"))
        assert_error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")

    def test_wrong_key_is_401(self, http_client: HttpClient) -> None:
        """An unknown key: 401 with the challenge."""
        r = http_client.get(http_client.url("/jobs"), headers=auth("not-a-key"))
        assert_error(r, 401, "unauthorized")
        assert "WWW-Authenticate" in r.headers

    def test_other_auth_scheme_is_401(self, http_client: HttpClient) -> None:
        """A valid key under a scheme other than Bearer is not accepted."""
        r = http_client.get(
            http_client.url("/jobs"), headers={"Authorization": f"Basic {ALICE_KEY}"}
        )
        assert_error(r, 401, "unauthorized")

    def test_submit_without_key_is_401_and_stores_nothing(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """POST /jobs without a key is refused before the body is looked at."""
        r = http_client.post(http_client.url("/jobs"), json=_GREETING)
        assert_error(r, 401, "unauthorized")
        self.assert_nothing_stored(kit)

    def test_bearer_key_is_accepted(self, http_client: HttpClient) -> None:
        """``Authorization: Bearer <key>`` authenticates."""
        r = http_client.get(http_client.url("/jobs"), headers=auth(ALICE_KEY))
        assert r.status == 200, r.body

    def test_x_api_key_is_accepted(self, http_client: HttpClient) -> None:
        """``X-API-Key: <key>`` authenticates."""
        r = http_client.get(http_client.url("/jobs"), headers={"X-API-Key": ALICE_KEY})
        assert r.status == 200, r.body

    # -- the happy path -----------------------------------------------------------------------
    def test_submit_is_202_with_location_and_every_field(self, http_client: HttpClient) -> None:
        """POST /jobs: 202, ``Location`` of the job, and the job with every documented field."""
        r = self.submit(http_client)
        assert r.status == 202, r.body
        job = r.json()
        assert set(job) == _JOB_FIELDS
        assert _UUID.match(job["id"])
        assert r.headers["Location"] == http_client.url(f"/jobs/{job['id']}")
        assert "Idempotent-Replayed" not in r.headers
        assert job["status"] == "queued"
        assert (job["template"], job["format"], job["locale"]) == ("greeting", "txt", None)
        assert _ISO_Z.match(job["created_at"])
        assert job["started_at"] is None
        assert job["finished_at"] is None
        assert job["attempts"] == 0
        assert job["error"] is None
        assert job["result_url"] is None

    def test_get_returns_the_submitted_job(self, http_client: HttpClient) -> None:
        """GET on ``Location`` returns the same job the submit answered with."""
        r = self.submit(http_client)
        got = http_client.get(r.headers["Location"], headers=auth(ALICE_KEY))
        assert got.status == 200
        assert got.media_type == "application/json"
        assert got.json() == r.json()

    def test_format_and_locale_are_normalized(self, http_client: HttpClient) -> None:
        """``"TXT"`` is stored as ``"txt"`` and ``"en-us"`` as ``"en_US"``."""
        r = self.submit(http_client, {**_GREETING, "format": "TXT", "locale": "en-us"})
        assert r.status == 202, r.body
        assert (r.json()["format"], r.json()["locale"]) == ("txt", "en_US")

    def test_run_job_then_get_shows_succeeded_with_result_url(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """After the job ran, GET shows succeeded, times, one attempt and a ``result_url``."""
        job = self.submit_and_run(http_client, kit)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 1
        assert _ISO_Z.match(job["started_at"])
        assert _ISO_Z.match(job["finished_at"])
        assert job["error"] is None
        assert job["result_url"] == http_client.url(f"/jobs/{job['id']}/result")

    def test_result_download(self, http_client: HttpClient, kit: ConvKit) -> None:
        """GET ``result_url``: the rendered bytes, their type, length and a named attachment."""
        job = self.submit_and_run(http_client, kit)
        r = http_client.get(job["result_url"], headers=auth(ALICE_KEY))
        assert r.status == 200
        assert r.body == b"Hello Ada!\n"
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.headers["Content-Length"] == str(len(r.body))
        assert r.headers["Content-Disposition"] == 'attachment; filename="greeting.txt"'

    def test_result_head_has_headers_and_no_body(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """HEAD on ``result_url``: 200 with the download's headers and an empty body."""
        job = self.submit_and_run(http_client, kit)
        r = http_client.head(job["result_url"], headers=auth(ALICE_KEY))
        assert r.status == 200
        assert r.body == b""
        assert r.headers["Content-Length"] == str(len(b"Hello Ada!\n"))
        assert "greeting.txt" in r.headers["Content-Disposition"]

    def test_delete_removes_job_row_and_artifact(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """DELETE: 204; then GET and result are 404 and the storage holds nothing of the job."""
        job = self.submit_and_run(http_client, kit)
        prefix = f"alice/{job['id']}"
        assert kit.storage.list(prefix), "the run stored no artifact"
        location = http_client.url(f"/jobs/{job['id']}")
        r = http_client.delete(location, headers=auth(ALICE_KEY))
        assert r.status == 204
        assert r.body == b""
        assert_error(http_client.get(location, headers=auth(ALICE_KEY)), 404, "job_not_found")
        assert_error(
            http_client.get(job["result_url"], headers=auth(ALICE_KEY)), 404, "job_not_found"
        )
        assert kit.storage.list(prefix) == []
        self.assert_nothing_stored(kit)

    def test_delete_twice_is_404(self, http_client: HttpClient) -> None:
        """A second DELETE of the same job is a 404."""
        location = self.submit(http_client).headers["Location"]
        assert http_client.delete(location, headers=auth(ALICE_KEY)).status == 204
        assert_error(http_client.delete(location, headers=auth(ALICE_KEY)), 404, "job_not_found")

    def test_delete_queued_job_never_runs(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A job deleted while queued is gone: running its id afterwards does nothing."""
        r = self.submit(http_client)
        assert http_client.delete(r.headers["Location"], headers=auth(ALICE_KEY)).status == 204
        assert kit.run_job(r.json()["id"]) is None
        self.assert_nothing_stored(kit)

    def test_unknown_job_id_is_404(self, http_client: HttpClient) -> None:
        """A well-formed id nobody has, and a malformed one, are both 404 job_not_found."""
        for job_id in ("00000000-0000-4000-8000-000000000000", "not-an-id"):
            r = http_client.get(http_client.url(f"/jobs/{job_id}"), headers=auth(ALICE_KEY))
            assert_error(r, 404, "job_not_found")

    def test_worker_runs_a_submitted_job(self, http_client: HttpClient, kit: ConvKit) -> None:
        """With a Worker started, a submitted job becomes succeeded without further help."""
        from convkit.worker import Worker

        worker = Worker(kit)
        worker.start()
        try:
            r = self.submit(http_client, {**_GREETING, "data": {"name": "Grace"}})
            job = wait_for_job(http_client, r.headers["Location"], key=ALICE_KEY)
        finally:
            worker.stop(grace_s=30)
        assert job["status"] == "succeeded", job
        download = http_client.get(job["result_url"], headers=auth(ALICE_KEY))
        assert download.body == b"Hello Grace!\n"

    # -- results that are not there (yet) ------------------------------------------------------
    def test_result_while_queued_is_409(self, http_client: HttpClient) -> None:
        """The result of a queued job: 409 job_not_finished."""
        r = self.submit(http_client)
        result = http_client.get(r.headers["Location"] + "/result", headers=auth(ALICE_KEY))
        assert_error(result, 409, "job_not_finished")

    def test_render_failure_marks_job_failed_with_error(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """A template failing at render time: failed, with an ``error`` {code, message}."""
        job = self.submit_and_run(http_client, kit, {"template": "boom", "format": "txt"})
        assert job["status"] == "failed"
        assert job["result_url"] is None
        assert set(job["error"]) == {"code", "message"}
        assert job["error"]["code"] == "template_error"
        assert "boom" in job["error"]["message"]
        assert job["finished_at"] is not None

    def test_result_of_failed_job_is_409(self, http_client: HttpClient, kit: ConvKit) -> None:
        """The result of a failed job: 409 job_failed."""
        job = self.submit_and_run(http_client, kit, {"template": "boom", "format": "txt"})
        r = http_client.get(http_client.url(f"/jobs/{job['id']}/result"), headers=auth(ALICE_KEY))
        assert_error(r, 409, "job_failed")

    # -- RESULT_URL_MODE=redirect ----------------------------------------------------------------
    @staticmethod
    def redirect_client(http_client: HttpClient, kit: ConvKit) -> tuple[HttpClient, ConvKit]:
        """A client of the same framework over a copy of ``kit`` in redirect mode (TTL 120 s)
        on a :class:`~convkit.testing.storage.SigningMemoryStorage`. ``http_client`` is closed
        first (idempotent), since one Django client may be open at a time."""
        from convkit.testing.storage import SigningMemoryStorage

        settings = attrs.evolve(
            kit.settings, result_url_mode="redirect", result_url_ttl_seconds=120
        )
        # Shares kit's store and queue; kit's own fixture closes them.
        redirecting = attrs.evolve(kit, settings=settings, storage=SigningMemoryStorage())
        http_client.close()
        return make_client(
            http_client.framework, redirecting, prefix=http_client.prefix
        ), redirecting

    def test_result_redirects_to_a_signed_url(self, http_client: HttpClient, kit: ConvKit) -> None:
        """In redirect mode, GET and HEAD on ``result_url`` answer 307 to the storage's signed
        URL for RESULT_URL_TTL_SECONDS, not cacheable; before success it is 409 as ever."""
        client, redirecting = self.redirect_client(http_client, kit)
        with client:
            r = self.submit(client)
            assert r.status == 202, r.body
            job_id = r.json()["id"]
            url = client.url(f"/jobs/{job_id}/result")
            assert_error(client.get(url, headers=auth(ALICE_KEY)), 409, "job_not_finished")
            redirecting.run_job(job_id)
            signed = f"https://signed.invalid/alice/{job_id}/greeting.txt?expires_s=120"
            for method in ("GET", "HEAD"):
                r = client.request(method, url, headers=auth(ALICE_KEY))
                assert r.status == 307, (method, r.status, r.body)
                assert r.headers["Location"] == signed
                assert "no-store" in r.headers["Cache-Control"]
            assert redirecting.storage.read(f"alice/{job_id}/greeting.txt") == b"Hello Ada!\n"

    def test_redirect_to_a_missing_artifact_is_404(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """In redirect mode an artifact that is gone is 404 result_missing, not a URL to it."""
        client, redirecting = self.redirect_client(http_client, kit)
        with client:
            job_id = self.submit(client).json()["id"]
            redirecting.run_job(job_id)
            assert redirecting.storage.delete(f"alice/{job_id}/greeting.txt")
            r = client.get(client.url(f"/jobs/{job_id}/result"), headers=auth(ALICE_KEY))
            assert_error(r, 404, "result_missing")

    # -- refused submissions: JSON error, nothing stored ---------------------------------------
    def test_invalid_json_is_400(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A body that is not JSON: 400 invalid_json."""
        assert_error(self.submit(http_client, body=b'{"template": '), 400, "invalid_json")
        self.assert_nothing_stored(kit)

    def test_empty_body_is_400(self, http_client: HttpClient, kit: ConvKit) -> None:
        """An empty body: 400 invalid_json."""
        assert_error(self.submit(http_client, body=b""), 400, "invalid_json")
        self.assert_nothing_stored(kit)

    def test_non_object_body_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A JSON array instead of an object: 422 invalid_body."""
        assert_error(self.submit(http_client, body=b'["greeting", "txt"]'), 422, "invalid_body")
        self.assert_nothing_stored(kit)

    def test_missing_template_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """No ``template`` field: 422 missing_field."""
        assert_error(self.submit(http_client, {"format": "txt"}), 422, "missing_field")
        self.assert_nothing_stored(kit)

    def test_missing_format_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """No ``format`` field: 422 missing_field."""
        assert_error(self.submit(http_client, {"template": "greeting"}), 422, "missing_field")
        self.assert_nothing_stored(kit)

    def test_unknown_template_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """An allowed template that does not exist: 422 template_not_found."""
        r = self.submit(http_client, {"template": "absent", "format": "txt"})
        assert_error(r, 422, "template_not_found")
        self.assert_nothing_stored(kit)

    def test_invalid_template_name_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A path as template name (``../etc/passwd``): 422 invalid_template_name."""
        r = self.submit(http_client, {"template": "../etc/passwd", "format": "txt"})
        assert_error(r, 422, "invalid_template_name")
        self.assert_nothing_stored(kit)

    def test_unsupported_format_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A format no converter makes from the template's: 422 unsupported_format."""
        r = self.submit(http_client, {**_GREETING, "format": "png"})
        assert_error(r, 422, "unsupported_format")
        self.assert_nothing_stored(kit)

    def test_invalid_format_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A format that is not a short name: 422 invalid_format."""
        r = self.submit(http_client, {**_GREETING, "format": "p d f"})
        assert_error(r, 422, "invalid_format")
        self.assert_nothing_stored(kit)

    def test_unknown_locale_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A well-formed locale nobody knows: 422 invalid_locale."""
        r = self.submit(http_client, {**_GREETING, "locale": "xx_YY"})
        assert_error(r, 422, "invalid_locale")
        self.assert_nothing_stored(kit)

    def test_unknown_field_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A field the API does not define: 422 unknown_field."""
        r = self.submit(http_client, {**_GREETING, "priority": "high"})
        assert_error(r, 422, "unknown_field")
        self.assert_nothing_stored(kit)

    def test_wrong_field_type_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """``data`` that is not an object: 422 invalid_field."""
        r = self.submit(http_client, {**_GREETING, "data": ["Ada"]})
        assert_error(r, 422, "invalid_field")
        self.assert_nothing_stored(kit)

    def test_non_json_content_type_is_415(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A JSON body sent as text/plain: 415."""
        r = self.submit(
            http_client,
            body=jsonlib.dumps(_GREETING).encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert_error(r, 415, "unsupported_media_type")
        self.assert_nothing_stored(kit)

    def test_missing_content_type_is_415(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A body without any Content-Type: 415."""
        r = http_client.post(
            http_client.url("/jobs"),
            headers=auth(ALICE_KEY),
            body=jsonlib.dumps(_GREETING).encode(),
        )
        assert_error(r, 415, "unsupported_media_type")
        self.assert_nothing_stored(kit)

    def test_json_content_type_with_charset_is_accepted(self, http_client: HttpClient) -> None:
        """``application/json; charset=utf-8`` is JSON."""
        r = self.submit(
            http_client,
            body=jsonlib.dumps(_GREETING).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status == 202, r.body

    def _oversized_body(self, kit: ConvKit) -> bytes:
        limit = kit.settings.max_request_bytes
        body = jsonlib.dumps({**_GREETING, "data": {"pad": "x" * limit}}).encode()
        assert len(body) > limit
        return body

    def test_body_over_limit_is_413(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A body larger than MAX_REQUEST_BYTES (with Content-Length): 413."""
        r = self.submit(http_client, body=self._oversized_body(kit))
        assert_error(r, 413, "payload_too_large")
        self.assert_nothing_stored(kit)

    def test_body_at_limit_is_accepted(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A body of exactly MAX_REQUEST_BYTES is not too large."""
        limit = kit.settings.max_request_bytes
        base = jsonlib.dumps({**_GREETING, "data": {"pad": ""}}).encode()
        body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (limit - len(base)) + b'"')
        assert len(body) == limit
        assert self.submit(http_client, body=body).status == 202

    def test_chunked_body_over_limit_is_413(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A chunked body (no Content-Length) larger than MAX_REQUEST_BYTES: 413."""
        if not http_client.supports_chunked:
            pytest.skip(f"{http_client.framework}: the test client sends no chunked bodies")
        body = self._oversized_body(kit)
        chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
        r = http_client.request_chunked(
            "POST",
            http_client.url("/jobs"),
            chunks,
            headers={**auth(ALICE_KEY), "Content-Type": "application/json"},
        )
        assert_error(r, 413, "payload_too_large")
        self.assert_nothing_stored(kit)

    def test_chunked_body_within_limit_is_accepted(self, http_client: HttpClient) -> None:
        """A small chunked body (no Content-Length) is read whole and accepted."""
        if not http_client.supports_chunked:
            pytest.skip(f"{http_client.framework}: the test client sends no chunked bodies")
        body = jsonlib.dumps(_GREETING).encode()
        r = http_client.request_chunked(
            "POST",
            http_client.url("/jobs"),
            [body[:10], body[10:]],
            headers={**auth(ALICE_KEY), "Content-Type": "application/json"},
        )
        assert r.status == 202, r.body

    def test_template_not_allowed_for_tenant_is_403(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """A template outside the tenant's own list: 403 template_not_allowed."""
        r = self.submit(http_client, {"template": "boom", "format": "txt"}, key=BOB_KEY)
        assert_error(r, 403, "template_not_allowed")
        self.assert_nothing_stored(kit, BOB_KEY)

    def test_template_not_in_global_list_is_403(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """A template that exists but is not in ALLOWED_TEMPLATES: 403, even for alice."""
        r = self.submit(http_client, {"template": "hidden", "format": "txt"})
        assert_error(r, 403, "template_not_allowed")
        self.assert_nothing_stored(kit)

    def test_template_syntax_error_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """A template that does not compile is refused at submission: 422 template_error."""
        r = self.submit(http_client, {"template": "broken", "format": "txt"})
        error = assert_error(r, 422, "template_error")
        assert "broken" in error["message"]
        self.assert_nothing_stored(kit)

    def test_invalid_idempotency_key_is_422(self, http_client: HttpClient, kit: ConvKit) -> None:
        """An Idempotency-Key longer than 200 characters: 422 invalid_idempotency_key."""
        r = self.submit(http_client, headers={"Idempotency-Key": "k" * 201})
        assert_error(r, 422, "invalid_idempotency_key")
        self.assert_nothing_stored(kit)

    # -- idempotency --------------------------------------------------------------------------
    def test_idempotent_replay_returns_the_same_job(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """Same key, same body: the same job, ``Idempotent-Replayed: true``, one row."""
        first = self.submit(http_client, headers={"Idempotency-Key": "order-1"})
        again = self.submit(http_client, headers={"Idempotency-Key": "order-1"})
        assert (first.status, again.status) == (202, 202)
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == first.headers["Location"]
        assert len(kit.list(_tenant(kit, ALICE_KEY)).jobs) == 1

    def test_idempotency_key_with_other_body_is_409(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """Same key, different body: 409 idempotency_conflict, still one row."""
        assert self.submit(http_client, headers={"Idempotency-Key": "order-2"}).status == 202
        other = {**_GREETING, "data": {"name": "Bob"}}
        r = self.submit(http_client, other, headers={"Idempotency-Key": "order-2"})
        assert_error(r, 409, "idempotency_conflict")
        assert len(kit.list(_tenant(kit, ALICE_KEY)).jobs) == 1

    def test_idempotency_keys_are_per_tenant(self, http_client: HttpClient, kit: ConvKit) -> None:
        """Another tenant using the same key gets its own, new job."""
        a = self.submit(http_client, headers={"Idempotency-Key": "shared"})
        b = self.submit(http_client, key=BOB_KEY, headers={"Idempotency-Key": "shared"})
        assert (a.status, b.status) == (202, 202)
        assert a.json()["id"] != b.json()["id"]
        assert "Idempotent-Replayed" not in b.headers
        assert len(kit.list(_tenant(kit, BOB_KEY)).jobs) == 1

    # -- tenant isolation ---------------------------------------------------------------------
    def test_other_tenant_cannot_get_a_job(self, http_client: HttpClient) -> None:
        """Bob's GET of alice's job: 404, like a job that does not exist."""
        location = self.submit(http_client).headers["Location"]
        assert_error(http_client.get(location, headers=auth(BOB_KEY)), 404, "job_not_found")

    def test_other_tenant_cannot_get_a_result(self, http_client: HttpClient, kit: ConvKit) -> None:
        """Bob's download of alice's finished result: 404."""
        job = self.submit_and_run(http_client, kit)
        r = http_client.get(job["result_url"], headers=auth(BOB_KEY))
        assert_error(r, 404, "job_not_found")

    def test_other_tenant_cannot_delete_a_job(self, http_client: HttpClient, kit: ConvKit) -> None:
        """Bob's DELETE of alice's job: 404, and the job is still there."""
        job = self.submit_and_run(http_client, kit)
        location = http_client.url(f"/jobs/{job['id']}")
        assert_error(http_client.delete(location, headers=auth(BOB_KEY)), 404, "job_not_found")
        assert http_client.get(location, headers=auth(ALICE_KEY)).json() == job
        assert kit.storage.list(f"alice/{job['id']}")

    def test_list_shows_only_own_jobs(self, http_client: HttpClient) -> None:
        """Each tenant's list holds its own jobs only."""
        alice = {self.submit(http_client).json()["id"] for _ in range(2)}
        bob = {self.submit(http_client, key=BOB_KEY).json()["id"]}
        for key, mine in ((ALICE_KEY, alice), (BOB_KEY, bob)):
            r = http_client.get(http_client.url("/jobs"), headers=auth(key))
            assert {j["id"] for j in r.json()["jobs"]} == mine

    def test_templates_lists_only_allowed_names(self, http_client: HttpClient) -> None:
        """/templates lists what the key may use: the global list, narrowed per tenant."""
        r = http_client.get(http_client.url("/templates"), headers=auth(ALICE_KEY))
        assert r.status == 200
        assert r.json() == {"templates": ["boom", "broken", "greeting", "page"]}
        r = http_client.get(http_client.url("/templates"), headers=auth(BOB_KEY))
        assert r.json() == {"templates": ["greeting", "page"]}

    # -- listing ------------------------------------------------------------------------------
    def test_list_of_new_tenant_is_empty(self, http_client: HttpClient) -> None:
        """A tenant without jobs gets an empty page and no cursor."""
        r = http_client.get(http_client.url("/jobs"), headers=auth(BOB_KEY))
        assert r.status == 200
        assert r.json() == {"jobs": [], "next_cursor": None}

    def test_list_is_newest_first(self, http_client: HttpClient) -> None:
        """Jobs come newest first, each in its public shape."""
        ids = [self.submit(http_client).json()["id"] for _ in range(4)]
        r = http_client.get(http_client.url("/jobs"), headers=auth(ALICE_KEY))
        jobs = r.json()["jobs"]
        assert [j["id"] for j in jobs] == ids[::-1]
        assert all(set(j) == _JOB_FIELDS for j in jobs)
        assert r.json()["next_cursor"] is None

    def test_list_pages_through_every_job(self, http_client: HttpClient) -> None:
        """``limit`` and ``next_cursor`` walk every job once, newest first, then stop."""
        ids = [self.submit(http_client).json()["id"] for _ in range(7)]
        seen: list[str] = []
        sizes: list[int] = []
        url = http_client.url("/jobs?limit=3")
        while True:
            page = http_client.get(url, headers=auth(ALICE_KEY)).json()
            seen += [j["id"] for j in page["jobs"]]
            sizes.append(len(page["jobs"]))
            if page["next_cursor"] is None:
                break
            cursor = urllib.parse.quote(page["next_cursor"], safe="")
            url = http_client.url(f"/jobs?limit=3&cursor={cursor}")
        assert seen == ids[::-1]
        assert sizes == [3, 3, 1]

    def test_list_filters_by_status(self, http_client: HttpClient, kit: ConvKit) -> None:
        """``?status=`` lists only the tenant's jobs in that state."""
        failed = self.submit_and_run(http_client, kit, {"template": "boom", "format": "txt"})
        done = self.submit_and_run(http_client, kit)
        queued = self.submit(http_client).json()
        self.submit(http_client, key=BOB_KEY)  # another tenant's queued job stays out
        for status, job in (("failed", failed), ("succeeded", done), ("queued", queued)):
            r = http_client.get(http_client.url(f"/jobs?status={status}"), headers=auth(ALICE_KEY))
            assert r.status == 200, r.body
            assert [j["id"] for j in r.json()["jobs"]] == [job["id"]], status
        r = http_client.get(http_client.url("/jobs?status=running"), headers=auth(ALICE_KEY))
        assert r.json() == {"jobs": [], "next_cursor": None}

    @pytest.mark.parametrize("status", ["done", "FAILED", "failed,queued", ""])
    def test_invalid_status_is_422(self, http_client: HttpClient, status: str) -> None:
        """A status that is not a job state: 422 invalid_status."""
        r = http_client.get(http_client.url(f"/jobs?status={status}"), headers=auth(ALICE_KEY))
        assert_error(r, 422, "invalid_status")

    # -- retry --------------------------------------------------------------------------------
    def test_retry_requeues_a_failed_job_with_fresh_attempts(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """POST /jobs/{id}/retry: 202, the job queued again with attempts 0 and its last
        error; its next run is attempt 1."""
        failed = self.submit_and_run(http_client, kit, {"template": "boom", "format": "txt"})
        assert failed["status"] == "failed" and failed["attempts"] >= 1
        url = http_client.url(f"/jobs/{failed['id']}/retry")
        r = http_client.post(url, headers=auth(ALICE_KEY))
        assert r.status == 202, r.body
        job = r.json()
        assert r.headers["Location"].endswith(f"/jobs/{failed['id']}")
        assert set(job) == _JOB_FIELDS
        assert (job["status"], job["attempts"], job["finished_at"]) == ("queued", 0, None)
        assert job["error"] == failed["error"]
        kit.run_job(job["id"])
        again = http_client.get(r.headers["Location"], headers=auth(ALICE_KEY)).json()
        assert (again["status"], again["attempts"]) == ("failed", 1)

    def test_retry_of_a_job_that_is_not_failed_is_409(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """Retrying a queued or succeeded job: 409 job_not_failed, the job unchanged."""
        for job in (self.submit(http_client).json(), self.submit_and_run(http_client, kit)):
            url = http_client.url(f"/jobs/{job['id']}/retry")
            assert_error(http_client.post(url, headers=auth(ALICE_KEY)), 409, "job_not_failed")
            after = http_client.get(http_client.url(f"/jobs/{job['id']}"), headers=auth(ALICE_KEY))
            assert after.json()["status"] == job["status"]

    def test_retry_of_another_tenants_job_is_404(
        self, http_client: HttpClient, kit: ConvKit
    ) -> None:
        """Another tenant's failed job, or no job at all: 404 job_not_found, nothing changed;
        without a key: 401."""
        failed = self.submit_and_run(http_client, kit, {"template": "boom", "format": "txt"})
        url = http_client.url(f"/jobs/{failed['id']}/retry")
        assert_error(http_client.post(url, headers=auth(BOB_KEY)), 404, "job_not_found")
        assert_error(http_client.post(url), 401, "unauthorized")
        missing = http_client.url("/jobs/00000000-0000-0000-0000-000000000000/retry")
        assert_error(http_client.post(missing, headers=auth(ALICE_KEY)), 404, "job_not_found")
        after = http_client.get(http_client.url(f"/jobs/{failed['id']}"), headers=auth(ALICE_KEY))
        assert after.json()["status"] == "failed"

    @pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "2.5", ""])
    def test_invalid_limit_is_422(self, http_client: HttpClient, limit: str) -> None:
        """A limit outside 1..200 or not a whole number: 422 invalid_limit."""
        r = http_client.get(http_client.url(f"/jobs?limit={limit}"), headers=auth(ALICE_KEY))
        assert_error(r, 422, "invalid_limit")

    @pytest.mark.parametrize("cursor", ["garbage!", "e30", "W10", "bm90IGpzb24"])
    def test_malformed_cursor_is_422(self, http_client: HttpClient, cursor: str) -> None:
        """A cursor that is not one the API issued: 422 invalid_cursor."""
        r = http_client.get(http_client.url(f"/jobs?cursor={cursor}"), headers=auth(ALICE_KEY))
        assert_error(r, 422, "invalid_cursor")

    # -- routing ------------------------------------------------------------------------------
    def test_unknown_route_is_404_json(self, http_client: HttpClient) -> None:
        """A path under the API that names no route: 404 not_found, with or without a key."""
        for headers in ({}, auth(ALICE_KEY)):
            r = http_client.get(http_client.url("/nope"), headers=headers)
            assert_error(r, 404, "not_found")

    def test_wrong_method_is_405_json_with_allow(self, http_client: HttpClient) -> None:
        """A method the route does not take: 405 method_not_allowed naming the allowed ones."""
        r = http_client.request(
            "PUT", http_client.url("/jobs"), headers=auth(ALICE_KEY), json=_GREETING
        )
        assert_error(r, 405, "method_not_allowed")
        assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "POST"}
        r = http_client.request("PATCH", http_client.url("/health"))
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == "GET"

    def test_trailing_slash_reaches_the_same_route(self, http_client: HttpClient) -> None:
        """``/jobs/`` is ``/jobs``."""
        r = http_client.get(http_client.url("/jobs/"), headers=auth(ALICE_KEY))
        assert r.status == 200, r.body
        assert r.json() == {"jobs": [], "next_cursor": None}
