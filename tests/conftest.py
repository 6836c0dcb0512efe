"""Shared fixtures: a real ConvKit (SQLite file, local storage, inline queue) and HTTP clients
over the real test clients of FastAPI, Flask and Django."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from convkit.backends.jobstores.sql.store import create_job_store
from convkit.backends.queues.inline import InlineQueue
from convkit.backends.storages.fsspec import FsspecStorage
from convkit.http import API_PREFIX
from convkit.ports import utcnow
from convkit.service import ConvKit
from convkit.settings import Settings
from convkit.testing import service_url
from convkit.testing.http import (
    CONTRACT_ALLOWED_TEMPLATES,
    CONTRACT_KEYS,
    CONTRACT_MAX_REQUEST_BYTES,
    HttpClient,
    make_client,
)
from convkit.testing.topology import fresh_schema

TEMPLATES = Path(__file__).parent / "templates"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: The bucket every S3 test gets, created fresh after each reset of the moto server.
S3_BUCKET = "convkit-test"

_FRAMEWORK_PARAMS = [
    pytest.param("fastapi", marks=pytest.mark.fastapi, id="fastapi"),
    pytest.param("flask", marks=pytest.mark.flask, id="flask"),
    pytest.param("django", marks=pytest.mark.django, id="django"),
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sweeper_only: the inline queue with separate workers that find jobs only through the "
        "sweeper (proves the topology harness; documents the behaviour before real brokers)",
    )


#: What convkit's defaults (DATABASE_URL, STORAGE_URL) create in the working directory: a test
#: must give its own paths under tmp_path instead of writing these into the repository.
_DEFAULT_OUTPUTS = ("convkit.db", "storage")
_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _writes_nothing_into_the_repository() -> Iterator[None]:
    """Fails the test that left ``convkit.db`` or ``storage/`` in the repository (or the
    working directory), where none was before it."""
    places = [base / name for base in {_ROOT, Path.cwd()} for name in _DEFAULT_OUTPUTS]
    before = {p for p in places if p.exists()}
    yield
    leaked = sorted(str(p) for p in places if p not in before and p.exists())
    assert not leaked, f"the test left {leaked}: give it settings under tmp_path"


class StrictClock:
    """The real UTC clock, made strictly increasing.

    Two jobs submitted within one tick of a coarse system clock would otherwise share a
    ``created_at``, and "newest first" would depend on their random ids.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: datetime | None = None

    def __call__(self) -> datetime:
        with self._lock:
            now = utcnow()
            if self._last is not None and now <= self._last:
                now = self._last + timedelta(microseconds=1)
            self._last = now
            return now


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections live in a fresh schema, dropped (with every row) afterwards."""
    with fresh_schema(service_url("TEST_DATABASE_URL", PG_DEFAULT, default_port=5432)) as url:
        yield url


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """A private copy of ``tests/templates``."""
    return Path(shutil.copytree(TEMPLATES, tmp_path / "templates"))


@pytest.fixture
def kit_factory(tmp_path: Path, templates_dir: Path) -> Iterator[Callable[..., ConvKit]]:
    """Build ConvKits on a migrated SQLite file, local file storage and a not-started inline
    queue; keyword arguments override the contract settings. Every kit is closed afterwards."""
    kits: list[ConvKit] = []

    def build(**overrides: object) -> ConvKit:
        n = len(kits)
        values: dict[str, object] = {
            "api_keys": dict(CONTRACT_KEYS),
            "allowed_templates": CONTRACT_ALLOWED_TEMPLATES,
            "templates_dir": str(templates_dir),
            "max_request_bytes": CONTRACT_MAX_REQUEST_BYTES,
            "database_url": f"sqlite:///{tmp_path / f'jobs-{n}.db'}",
            "storage_url": str(tmp_path / f"storage-{n}"),
            **overrides,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        clock = StrictClock()
        store = create_job_store(settings.database_url, settings, clock=clock)
        store.migrate()
        kit = ConvKit.from_settings(
            settings,
            store=store,
            storage=FsspecStorage(settings.storage_url),
            queue=InlineQueue(threads=2),
            clock=clock,
        )
        kits.append(kit)
        return kit

    yield build
    for kit in kits:
        kit.close()


@pytest.fixture
def kit(kit_factory: Callable[..., ConvKit]) -> ConvKit:
    """The ConvKit behind ``http_client``: two tenants (``alice``, and ``bob`` limited to
    greeting|page), a global allowed list without ``hidden``, 64 KiB bodies. Its queue is not
    started: tests run jobs with ``kit.run_job`` or start a Worker themselves."""
    return kit_factory()


@pytest.fixture
def client_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., HttpClient]]:
    """Build HTTP clients (``framework, kit, prefix=``); every one is closed afterwards."""
    clients: list[HttpClient] = []

    def build(framework: str, kit: ConvKit, *, prefix: str = API_PREFIX) -> HttpClient:
        client = make_client(framework, kit, prefix=prefix)
        clients.append(client)
        return client

    yield build
    for client in reversed(clients):
        client.close()


@pytest.fixture(params=_FRAMEWORK_PARAMS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each adapter in turn: fastapi, flask, django."""
    return str(request.param)


@pytest.fixture
def http_client(
    framework: str, kit: ConvKit, client_factory: Callable[..., HttpClient]
) -> HttpClient:
    """An HttpClient over a fresh app of ``framework`` serving ``kit`` under /api/v1."""
    return client_factory(framework, kit)


# --------------------------------------------------------------------------------------------------
# S3 (moto)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port, one per test module (as s3fs's own tests run it)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_options(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """STORAGE_OPTIONS for the moto server, reset for this test, with :data:`S3_BUCKET`
    created; s3fs's cached filesystem instances (and their listings) are dropped around it."""
    import s3fs

    reset = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(reset, timeout=30).close()  # noqa: S310  # moto's own http URL
    s3fs.S3FileSystem.clear_instance_cache()
    options: dict[str, Any] = {
        "endpoint_url": moto_endpoint,
        "key": "convkit-test-key",
        "secret": "convkit-test-secret",
        "client_kwargs": {"region_name": "us-east-1"},
        # SigV4 presigned URLs (X-Amz-Expires=...), as every region and MinIO accept.
        "config_kwargs": {"signature_version": "s3v4"},
    }
    s3_client(options).create_bucket(Bucket=S3_BUCKET)
    yield options
    s3fs.S3FileSystem.clear_instance_cache()


def s3_client(options: dict[str, Any]) -> Any:
    """A plain boto3 client for the same server, to look behind the storage's back."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
        region_name=options["client_kwargs"]["region_name"],
    )
