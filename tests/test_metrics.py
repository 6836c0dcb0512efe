"""Prometheus metrics: jobs through a real ConvKit and the HTTP API of every adapter, then
``GET /metrics`` read back with prometheus_client's own parser; the token, per-instance
registries, multiprocess mode, and metrics off without prometheus_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from convkit import ConvKit, hookimpl
from convkit.backends.observability import prometheus
from convkit.job import Job
from convkit.ports import Converter
from convkit.testing.http import ALICE_KEY, BOB_KEY, HttpClient, Response, auth

ROOT = Path(__file__).resolve().parent.parent
ClientFactory = Callable[..., HttpClient]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

GREETING = {"template": "greeting", "format": "txt", "data": {"name": "Ada"}}
BOOM = {"template": "boom", "format": "txt"}  # renders with an error: fails, not retried

#: Every family the issue asks for, by the name prometheus_client's parser gives it.
FAMILIES = {
    "convkit_jobs_submitted",
    "convkit_jobs_finished",
    "convkit_job_retries",
    "convkit_job_errors",
    "convkit_jobs_deleted",
    "convkit_job_duration_seconds",
    "convkit_job_phase_duration_seconds",
    "convkit_queue_depth",
    "convkit_queue_oldest_age_seconds",
    "convkit_converter_processes",
    "convkit_converter_restarts",
    "convkit_conversions",
    "convkit_conversion_duration_seconds",
    "convkit_storage_written_bytes",
    "convkit_storage_free_bytes",
    "convkit_http_requests",
    "convkit_http_request_duration_seconds",
}


def parse(body: bytes) -> tuple[set[str], Samples]:
    """Family names and ``{(sample name, labels): value}`` of a text exposition."""
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: HttpClient, **headers: str) -> Response:
    return client.get("/metrics", headers=headers)


def run_through_api(client: HttpClient, kit: ConvKit, body: dict[str, Any], n: int) -> list[str]:
    """Submit ``n`` jobs as alice and run each once; return their ids."""
    ids = []
    for _ in range(n):
        r = client.post(client.url("/jobs"), headers=auth(ALICE_KEY), json=body)
        assert r.status == 202, r.body
        ids.append(r.json()["id"])
        kit.run_job(ids[-1])
    return ids


# -- the families, after N jobs ------------------------------------------------------------------


def test_job_counters_equal_the_jobs_run(
    framework: str, kit: ConvKit, client_factory: ClientFactory
) -> None:
    """After 3 good and 2 failing jobs through the API, the counters say 3 and 2, and every
    family the runbook needs is exposed."""
    client = client_factory(framework, kit)
    good = run_through_api(client, kit, GREETING, 3)
    run_through_api(client, kit, BOOM, 2)
    assert client.delete(client.url(f"/jobs/{good[0]}"), headers=auth(ALICE_KEY)).status == 204
    r = scrape(client)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    names, s = parse(r.body)
    assert names >= FAMILIES
    greeting = {"format": "txt", "template": "greeting"}
    boom = {"format": "txt", "template": "boom"}
    assert value(s, "convkit_jobs_submitted_total", **greeting) == 3
    assert value(s, "convkit_jobs_submitted_total", **boom) == 2
    assert value(s, "convkit_jobs_finished_total", outcome="succeeded", **greeting) == 3
    assert value(s, "convkit_jobs_finished_total", outcome="failed", **boom) == 2
    assert value(s, "convkit_jobs_finished_total", outcome="failed", **greeting) == 0
    assert value(s, "convkit_job_errors_total", code="template_error") == 2
    assert value(s, "convkit_jobs_deleted_total") == 1
    assert value(s, "convkit_job_duration_seconds_count", outcome="succeeded") == 3
    assert value(s, "convkit_job_duration_seconds_count", outcome="failed") == 2
    for phase, count in (("claim", 5), ("render", 5), ("store", 3)):
        assert value(s, "convkit_job_phase_duration_seconds_count", phase=phase) == count
    assert value(s, "convkit_storage_written_bytes_total") == 3 * len(b"Hello Ada!\n")
    assert value(s, "convkit_queue_depth") == 0
    assert value(s, "convkit_storage_free_bytes") > 0
    # The route's template, never the raw path, and the status.
    posted = {"method": "POST", "route": "/jobs", "status": "202"}
    assert value(s, "convkit_http_requests_total", **posted) == 5
    deleted = {"method": "DELETE", "route": "/jobs/{job_id}", "status": "204"}
    assert value(s, "convkit_http_requests_total", **deleted) == 1
    assert not any(good[0] in str(labels) for _, labels in s)


def test_queue_gauges_read_the_job_store(
    kit: ConvKit, client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued jobs show as depth and the oldest one's age, read from the store; the numbers
    are cached for a few seconds, so a scrape storm costs one query."""
    monkeypatch.setattr(prometheus, "QUEUE_STATS_TTL_S", 0.0)
    client = client_factory("flask", kit)
    for _ in range(2):
        client.post(client.url("/jobs"), headers=auth(ALICE_KEY), json=GREETING)
    _, s = parse(scrape(client).body)
    assert value(s, "convkit_queue_depth") == 2
    assert value(s, "convkit_queue_oldest_age_seconds") >= 0
    calls = []
    real = kit.store.queue_stats
    monkeypatch.setattr(kit.store, "queue_stats", lambda: calls.append(1) or real())
    monkeypatch.setattr(prometheus, "QUEUE_STATS_TTL_S", 3600.0)
    for _ in range(3):
        scrape(client)
    assert len(calls) <= 1


def test_converter_events_feed_their_families(kit: ConvKit) -> None:
    """The converter events (reported by the LibreOffice pool) land in their families."""
    hook = kit.pm.hook
    hook.conversion_finished(
        converter="libreoffice",
        source_format="docx",
        target_format="pdf",
        duration_s=0.2,
        outcome="ok",
    )
    hook.converter_process_restarted(converter="libreoffice", reason="max_tasks")
    hook.converter_pool_changed(converter="libreoffice", busy=1, idle=3)
    status, _, body = prometheus.metrics_response(kit)
    assert status == 200
    _, s = parse(body)
    pair = {"converter": "libreoffice", "source_format": "docx", "target_format": "pdf"}
    assert value(s, "convkit_conversions_total", outcome="ok", **pair) == 1
    assert value(s, "convkit_converter_restarts_total", converter="libreoffice", reason="max_tasks")
    assert value(s, "convkit_converter_processes", converter="libreoffice", state="busy") == 1
    assert value(s, "convkit_converter_processes", converter="libreoffice", state="idle") == 3


def test_template_label_is_bounded_by_the_template_source(kit: ConvKit) -> None:
    """A name the template source does not list is "(other)"; an upload job is "(upload)"."""
    metrics = prometheus.metrics_for(kit)
    assert metrics is not None
    assert metrics._template_label("greeting") == "greeting"
    assert metrics._template_label("x" * 60) == prometheus.OTHER_LABEL
    assert metrics._template_label(None) == prometheus.UPLOAD_LABEL


def test_tenant_label_only_when_asked(
    kit_factory: Callable[..., ConvKit], client_factory: ClientFactory
) -> None:
    """No tenant label by default; METRICS_TENANT_LABEL=true adds one to the job counters."""
    plain = kit_factory()
    labelled = kit_factory(values={"METRICS_TENANT_LABEL": True})
    for kit, tenant in ((plain, None), (labelled, "alice")):
        client = client_factory("flask", kit)
        run_through_api(client, kit, GREETING, 1)
        _, s = parse(scrape(client).body)
        labels = {"format": "txt", "template": "greeting"}
        if tenant is not None:
            labels["tenant"] = tenant
        assert value(s, "convkit_jobs_submitted_total", **labels) == 1


def test_every_instance_counts_its_own_jobs(
    kit_factory: Callable[..., ConvKit], client_factory: ClientFactory
) -> None:
    """Two kits in one process keep separate registries (no module-global registry)."""
    first, second = kit_factory(), kit_factory()
    run_through_api(client_factory("flask", first), first, GREETING, 2)
    run_through_api(client_factory("fastapi", second), second, GREETING, 1)
    for kit, n in ((first, 2), (second, 1)):
        _, s = parse(prometheus.metrics_response(kit)[2])
        assert value(s, "convkit_jobs_submitted_total", format="txt", template="greeting") == n


# -- the token -----------------------------------------------------------------------------------


def test_metrics_are_open_without_a_token(
    framework: str, kit: ConvKit, client_factory: ClientFactory
) -> None:
    """Without METRICS_TOKEN, /metrics needs no key; API keys are not asked for."""
    r = scrape(client_factory(framework, kit))
    assert r.status == 200
    assert "X-Request-ID" in r.headers


def test_metrics_token_is_required_when_set(
    framework: str, kit_factory: Callable[..., ConvKit], client_factory: ClientFactory
) -> None:
    """With METRICS_TOKEN, /metrics answers 401 without it, with a wrong one and with an API
    key, and 200 with ``Authorization: Bearer <token>``; other methods are 405."""
    kit = kit_factory(metrics_token="scrape-me-please")
    client = client_factory(framework, kit)
    assert scrape(client).status == 401
    assert scrape(client, Authorization="Bearer nope").status == 401
    assert scrape(client, **auth(ALICE_KEY)).status == 401
    assert scrape(client, Authorization="Basic scrape-me-please").status == 401
    ok = scrape(client, Authorization="Bearer scrape-me-please")
    assert ok.status == 200
    assert b"convkit_jobs_submitted" in ok.body
    assert client.post("/metrics", body=b"").status == 405


# -- several server processes --------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import glob, os, sys
    from convkit import ConvKit, JobSpec, Settings, Tenant
    settings = Settings(
        database_url=sys.argv[1], storage_url=sys.argv[2], templates_dir=sys.argv[3]
    )
    kit = ConvKit.from_settings(settings, migrate=True)
    for _ in range(int(sys.argv[4])):
        job, _ = kit.submit(Tenant("acme"), JobSpec("greeting", "txt", data={"name": "Ada"}))
        kit.run_job(job.id)
    # What the LibreOffice pool reports: a live gauge, removed when this process exits.
    kit.pm.hook.converter_pool_changed(converter="libreoffice", busy=0, idle=1)
    assert glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "gauge_livesum_*"))
    kit.close()
    """
)


@pytest.mark.slow
def test_multiprocess_mode_adds_up_every_process(
    tmp_path: Path, templates_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' counters are merged by any one scrape,
    and a process that exited leaves no pool gauge behind."""
    mp_dir = tmp_path / "prometheus"
    mp_dir.mkdir()
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    storage = str(tmp_path / "storage")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
    }
    for n in (2, 3):
        subprocess.run(
            [sys.executable, "-c", _CHILD, db, storage, str(templates_dir), str(n)],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert list(mp_dir.glob("counter_*.db"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp_dir))
    from convkit.settings import Settings

    kit = ConvKit.from_settings(
        Settings(database_url=db, storage_url=storage, templates_dir=str(templates_dir))
    )
    try:
        status, _, body = prometheus.metrics_response(kit)
    finally:
        kit.close()
    assert status == 200
    _, s = parse(body)
    labels = {"format": "txt", "template": "greeting"}
    assert value(s, "convkit_jobs_submitted_total", **labels) == 5
    assert value(s, "convkit_jobs_finished_total", outcome="succeeded", **labels) == 5
    assert value(s, "convkit_job_phase_duration_seconds_count", phase="render") == 5
    assert value(s, "convkit_queue_depth") == 0  # read from the store by the scraping process
    assert not list(mp_dir.glob("gauge_livesum_*.db"))


# -- metrics off ---------------------------------------------------------------------------------


def test_without_prometheus_client_metrics_are_off(
    kit_factory: Callable[..., ConvKit],
    client_factory: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """prometheus_client missing: one INFO line, /metrics is 404, jobs run as ever."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    monkeypatch.setattr(prometheus, "_reported_missing", False)
    caplog.set_level("INFO", logger="convkit.metrics")
    kit = kit_factory()
    kit_factory()
    off = [r for r in caplog.records if r.name == "convkit.metrics"]
    assert [(r.levelname, r.getMessage()) for r in off] == [
        ("INFO", "metrics are off: prometheus_client is not installed (convkit[metrics])")
    ]
    client = client_factory("django", kit)
    r = scrape(client)
    assert r.status == 404
    assert "convkit[metrics]" in json.loads(r.body)["error"]["message"]
    (job_id,) = run_through_api(client, kit, GREETING, 1)
    assert (
        client.get(client.url(f"/jobs/{job_id}"), headers=auth(ALICE_KEY)).json()["status"]
        == "succeeded"
    )


# -- the hooks the metrics are fed by ------------------------------------------------------------


class Events:
    """A plugin recording the instance and step events, with a txt -> upper converter."""

    def __init__(self) -> None:
        self.kits: list[ConvKit] = []
        self.phases: list[tuple[str, str, float]] = []
        self.requests: list[tuple[str, str, int]] = []

    @hookimpl
    def kit_created(self, kit: ConvKit) -> None:
        self.kits.append(kit)

    @hookimpl
    def phase_finished(self, job: Job, phase: str, duration_s: float) -> None:
        self.phases.append((job.id, phase, duration_s))

    @hookimpl
    def request_finished(self, method: str, route: str, status: int, duration_s: float) -> None:
        assert duration_s >= 0
        self.requests.append((method, route, status))

    @hookimpl
    def register_converters(self) -> list[Converter]:
        from tests.test_service import FlakyConverter

        return [FlakyConverter()]


def test_hook_kit_created(kit_factory: Callable[..., ConvKit], tmp_path: Path) -> None:
    """kit_created gets each new instance once, after its backends; the built-in plugin
    registers the instance's metrics on the instance's own plugin manager."""
    from convkit.settings import Settings

    events = Events()
    kit = ConvKit.from_settings(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'j.db'}",
            storage_url=str(tmp_path / "storage"),
            templates_dir=str(tmp_path),
        ),
        plugins=[events],
        migrate=True,
    )
    try:
        assert events.kits == [kit]
        metrics = prometheus.metrics_for(kit)
        assert metrics is not None and metrics.kit is kit
        assert prometheus.metrics_for(kit_factory()) is not metrics
    finally:
        kit.close()


def test_hook_phase_finished(tmp_path: Path, templates_dir: Path) -> None:
    """A job that renders and converts reports claim, render, convert and store, in order."""
    from convkit import JobSpec, Settings, Tenant

    events = Events()
    kit = ConvKit.from_settings(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'j.db'}",
            storage_url=str(tmp_path / "s"),
            templates_dir=str(templates_dir),
        ),
        plugins=[events],
        migrate=True,
    )
    try:
        job, _ = kit.submit(Tenant("acme"), JobSpec("greeting", "upper", data={"name": "Ada"}))
        done = kit.run_job(job.id)
        assert done is not None and done.result is not None
        assert kit.storage.read(done.result.key) == b"HELLO ADA!\n"
    finally:
        kit.close()
    assert [(i, p) for i, p, _ in events.phases] == [
        (job.id, "claim"),
        (job.id, "render"),
        (job.id, "convert"),
        (job.id, "store"),
    ]
    assert all(d >= 0 for _, _, d in events.phases)


def test_hook_request_finished(framework: str, kit: ConvKit, client_factory: ClientFactory) -> None:
    """Every answered request reports its route template (never the raw path) and status."""
    events = Events()
    kit.pm.register(events)
    client = client_factory(framework, kit)
    missing = "00000000-0000-4000-8000-000000000000"
    client.get(client.url(f"/jobs/{missing}"), headers=auth(BOB_KEY))
    client.get(client.url("/nowhere"))
    client.request("PUT", client.url("/jobs"), headers=auth(BOB_KEY))
    scrape(client)
    assert events.requests == [
        ("GET", "/jobs/{job_id}", 404),
        ("GET", "unmatched", 404),
        ("PUT", "/jobs", 405),
        ("GET", "/metrics", 200),
    ]


def test_hook_metrics_exposition(tmp_path: Path) -> None:
    """The built-in plugin answers the hook with the Prometheus exposition; a plugin that
    answers first replaces it, and the worker's health server serves the same answer."""
    import urllib.request

    from convkit import hookimpl
    from convkit.health import HealthServer
    from convkit.settings import Settings

    class Custom:
        @hookimpl(tryfirst=True)
        def metrics_exposition(self, kit: ConvKit) -> tuple[int, list[tuple[str, str]], bytes]:
            return 200, [("Content-Type", "text/plain")], b"custom_up 1\n"

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'j.db'}",
        storage_url=str(tmp_path / "storage"),
        templates_dir=str(tmp_path),
    )
    kit = ConvKit.from_settings(settings, migrate=True)
    custom = ConvKit.from_settings(settings, plugins=[Custom()])
    try:
        status, headers, body = kit.pm.hook.metrics_exposition(kit=kit)
        assert status == 200 and b"convkit_jobs_submitted_total" in body
        assert dict(headers)["Content-Type"].startswith("text/plain")
        assert custom.pm.hook.metrics_exposition(kit=custom)[2] == b"custom_up 1\n"
        server = HealthServer(kit, host="127.0.0.1", port=0).start()
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:  # local test server
                assert resp.status == 200
                assert b"convkit_jobs_submitted_total" in resp.read()
        finally:
            server.stop()
    finally:
        kit.close()
        custom.close()
