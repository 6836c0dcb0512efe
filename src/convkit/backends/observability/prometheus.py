"""Prometheus metrics of one ConvKit instance, fed by the lifecycle, converter and HTTP events.

Each instance has its own :class:`prometheus_client.CollectorRegistry` (never the module-global
default one), so several instances in one process (tests, multi-tenant apps) keep apart. With
``PROMETHEUS_MULTIPROC_DIR`` set (several server processes behind one port), prometheus_client
writes every value to files in that folder and :func:`metrics_response` merges the files of
every process; that mode is fixed when prometheus_client is imported, so set the variable before
the process starts. Queue depth, the oldest job's age and free disk are read when scraped (the
queue from the job store, cached for :data:`QUEUE_STATS_TTL_S`), so every replica reports the
same truth.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from convkit.job import Job, JobError
    from convkit.service import ConvKit

__all__ = ["PLUGIN_NAME", "QUEUE_STATS_TTL_S", "KitMetrics", "install", "metrics_response"]

log = logging.getLogger("convkit.metrics")

#: The name a kit's :class:`KitMetrics` is registered under on its plugin manager.
PLUGIN_NAME = "convkit.metrics"
#: Seconds a scrape reuses the job store's queue numbers (a scrape every second costs one query
#: per this many seconds).
QUEUE_STATS_TTL_S = 5.0
#: A template name missing from the cached list (the ``template`` label's allowed values)
#: re-reads the list from the template source at most this often, in seconds.
TEMPLATE_NAMES_REFRESH_S = 5.0

#: Job durations span milliseconds (a text template) to minutes (a long conversion, a backlog).
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
#: The ``template`` label of an upload conversion job, and of a name the source does not list.
UPLOAD_LABEL = "(upload)"
OTHER_LABEL = "(other)"

_reported_missing = False
_exit_hook = threading.Lock()
_exit_registered = False


def multiprocess_dir() -> str | None:
    """The multiprocess folder prometheus_client uses (None: single-process mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def install(kit: ConvKit) -> KitMetrics | None:
    """Register a :class:`KitMetrics` on ``kit``'s plugin manager (once); without
    prometheus_client, log one INFO line per process and return None."""
    global _reported_missing
    try:
        import prometheus_client  # noqa: F401  # only asks whether it is installed
    except ImportError:
        if not _reported_missing:
            _reported_missing = True
            log.info("metrics are off: prometheus_client is not installed (convkit[metrics])")
        return None
    existing = kit.pm.get_plugin(PLUGIN_NAME)
    if isinstance(existing, KitMetrics):
        return existing
    metrics = KitMetrics(kit, tenant_label=bool(_setting(kit, "METRICS_TENANT_LABEL", False)))
    kit.pm.register(metrics, name=PLUGIN_NAME)
    return metrics


def metrics_for(kit: ConvKit) -> KitMetrics | None:
    """The kit's metrics, or None when they are off."""
    plugin = kit.pm.get_plugin(PLUGIN_NAME)
    return plugin if isinstance(plugin, KitMetrics) else None


def metrics_response(kit: ConvKit) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of ``GET /metrics`` for ``kit``: 200 with the Prometheus text
    exposition, or 404 with a JSON error when metrics are off. Checks no token: the HTTP API's
    ``/metrics`` does that (``METRICS_TOKEN``) before calling this."""
    metrics = metrics_for(kit)
    if metrics is None:
        error = {
            "code": "not_found",
            "message": "metrics are off: pip install 'convkit[metrics]'",
        }
        body = json.dumps({"error": error}, separators=(",", ":")).encode()
        return 404, [("Content-Type", "application/json")], body
    from prometheus_client import CONTENT_TYPE_LATEST

    return 200, [("Content-Type", CONTENT_TYPE_LATEST)], metrics.render()


def _setting(kit: ConvKit, name: str, default: Any) -> Any:
    try:
        return kit.settings.get(name)
    except KeyError:  # settings built in code, never bound to the plugins: the default
        return default


class KitMetrics:
    """The metric families of one instance and the hookimpls that feed them."""

    def __init__(self, kit: ConvKit, *, tenant_label: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.kit = kit
        self.registry = CollectorRegistry()
        self.tenant_label = tenant_label
        self._names: frozenset[str] = frozenset()
        self._names_at = -TEMPLATE_NAMES_REFRESH_S
        self._lock = threading.Lock()
        reg = self.registry
        job = ["format", "template", *(["tenant"] if tenant_label else [])]
        self.submitted = Counter(
            "convkit_jobs_submitted", "Jobs accepted (stored and queued).", job, registry=reg
        )
        self.finished = Counter(
            "convkit_jobs_finished",
            "Jobs that reached a final state, by outcome (succeeded, failed).",
            ["outcome", *job],
            registry=reg,
        )
        self.retries = Counter(
            "convkit_job_retries", "Failed attempts queued again for a retry.", job, registry=reg
        )
        self.errors = Counter(
            "convkit_job_errors", "Failed attempts, by error code.", ["code"], registry=reg
        )
        self.deleted = Counter(
            "convkit_jobs_deleted", "Jobs deleted by a client or by cleanup.", registry=reg
        )
        self.job_duration = Histogram(
            "convkit_job_duration_seconds",
            "From submission to the final state, retries and queueing included.",
            ["outcome"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.phase_duration = Histogram(
            "convkit_job_phase_duration_seconds",
            "One step of an attempt: claim, render, convert, store.",
            ["phase"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.pool = Gauge(
            "convkit_converter_processes",
            "Converter worker processes (LibreOffice), by state (busy, idle).",
            ["converter", "state"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.restarts = Counter(
            "convkit_converter_restarts",
            "Converter processes replaced, by reason.",
            ["converter", "reason"],
            registry=reg,
        )
        self.conversions = Counter(
            "convkit_conversions",
            "Conversion attempts, by formats and outcome (ok, error, timeout, crash).",
            ["converter", "source_format", "target_format", "outcome"],
            registry=reg,
        )
        self.conversion_duration = Histogram(
            "convkit_conversion_duration_seconds",
            "Wall time of one conversion attempt.",
            ["converter"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.written = Counter(
            "convkit_storage_written_bytes", "Bytes of artifacts written to storage.", registry=reg
        )
        self.requests = Counter(
            "convkit_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "convkit_http_request_duration_seconds",
            "Time to answer an HTTP request (a streamed body's transfer excluded).",
            ["method", "route"],
            registry=reg,
        )
        self.scrape = _ScrapeCollector(kit)
        reg.register(self.scrape)
        mp_dir = multiprocess_dir()
        if mp_dir is None:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=reg)
        else:
            _remove_live_gauges_at_exit(mp_dir)

    # -- exposition ----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition: this instance's registry, or in multiprocess mode every
        process's files merged, plus the values read at scrape time."""
        from prometheus_client import CollectorRegistry, generate_latest

        mp_dir = multiprocess_dir()
        if mp_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=mp_dir)  # type: ignore[no-untyped-call]
        merged.register(self.scrape)
        return generate_latest(merged)

    # -- labels --------------------------------------------------------------------------------
    def _job_labels(self, job: Job) -> dict[str, str]:
        labels = {"format": job.format, "template": self._template_label(job.template)}
        if self.tenant_label:
            labels["tenant"] = job.tenant
        return labels

    def _template_label(self, name: str | None) -> str:
        """The template's name when the template source lists it, so a label's values stay
        bounded by the templates that exist."""
        if name is None:
            return UPLOAD_LABEL
        with self._lock:
            now = time.monotonic()
            if name not in self._names and now - self._names_at >= TEMPLATE_NAMES_REFRESH_S:
                try:
                    self._names = frozenset(self.kit.templates.names())
                except Exception:  # a folder gone for a moment: keep what was known
                    log.warning("template names unreadable for metrics", exc_info=True)
                self._names_at = now
            return name if name in self._names else OTHER_LABEL

    def _age(self, job: Job) -> float:
        end = job.finished_at or self.kit.clock()
        return max(0.0, (end - job.created_at).total_seconds())

    # -- events --------------------------------------------------------------------------------
    @hookimpl
    def job_submitted(self, job: Job) -> None:
        self.submitted.labels(**self._job_labels(job)).inc()

    @hookimpl
    def job_succeeded(self, job: Job) -> None:
        self.finished.labels(outcome="succeeded", **self._job_labels(job)).inc()
        self.job_duration.labels(outcome="succeeded").observe(self._age(job))
        if job.result is not None:
            self.written.inc(job.result.size)

    @hookimpl
    def job_failed(self, job: Job, error: JobError, will_retry: bool) -> None:
        self.errors.labels(code=error.code).inc()
        if will_retry:
            self.retries.labels(**self._job_labels(job)).inc()
            return
        self.finished.labels(outcome="failed", **self._job_labels(job)).inc()
        self.job_duration.labels(outcome="failed").observe(self._age(job))

    @hookimpl
    def job_deleted(self) -> None:
        self.deleted.inc()

    @hookimpl
    def phase_finished(self, phase: str, duration_s: float) -> None:
        self.phase_duration.labels(phase=phase).observe(duration_s)

    @hookimpl
    def conversion_finished(
        self,
        converter: str,
        source_format: str,
        target_format: str,
        duration_s: float,
        outcome: str,
    ) -> None:
        self.conversions.labels(converter, source_format, target_format, outcome).inc()
        self.conversion_duration.labels(converter).observe(duration_s)

    @hookimpl
    def converter_process_restarted(self, converter: str, reason: str) -> None:
        self.restarts.labels(converter, reason).inc()

    @hookimpl
    def converter_pool_changed(self, converter: str, busy: int, idle: int) -> None:
        self.pool.labels(converter, "busy").set(busy)
        self.pool.labels(converter, "idle").set(idle)

    @hookimpl
    def request_finished(self, method: str, route: str, status: int, duration_s: float) -> None:
        method = method if method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.request_duration.labels(method, route).observe(duration_s)


class _ScrapeCollector:
    """Values read when scraped rather than counted: the queue (from the job store, cached)
    and the free disk of local storage."""

    def __init__(self, kit: ConvKit) -> None:
        self.kit = kit
        self._lock = threading.Lock()
        self._stats: tuple[int, float] | None = None
        self._stats_at = 0.0

    def _queue_stats(self) -> tuple[int, float] | None:
        with self._lock:
            now = time.monotonic()
            if self._stats is None or now - self._stats_at >= QUEUE_STATS_TTL_S:
                try:
                    self._stats = self.kit.store.queue_stats()
                except Exception as exc:  # database down: leave the gauges out, /ready says why
                    log.warning("queue metrics unavailable: %s", exc)
                    return None
                self._stats_at = now
            return self._stats

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self._queue_stats()
        if stats is not None:
            depth, age = stats
            yield GaugeMetricFamily(
                "convkit_queue_depth",
                "Jobs a worker may claim now, from the job store (the same on every replica).",
                value=depth,
            )
            yield GaugeMetricFamily(
                "convkit_queue_oldest_age_seconds",
                "Age since submission of the oldest job waiting for a worker.",
                value=age,
            )
        free = _free_bytes(self.kit.settings.storage_url)
        if free is not None:
            yield GaugeMetricFamily(
                "convkit_storage_free_bytes",
                "Free bytes on the file system of a local STORAGE_URL.",
                value=free,
            )


def _free_bytes(storage_url: str) -> int | None:
    """Free space under a local storage folder (None for object stores and memory)."""
    if storage_url.startswith("file://"):
        path = Path(storage_url[len("file://") :])
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", storage_url):
        return None  # s3://, memory://, any other fsspec protocol
    else:
        path = Path(storage_url)
    path = path.expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent  # not created yet: the disk it will be on
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _remove_live_gauges_at_exit(mp_dir: str) -> None:
    """A process's pool gauges (``livesum``) stop counting once it exits."""
    global _exit_registered
    with _exit_hook:
        if _exit_registered:
            return
        _exit_registered = True
    from prometheus_client.multiprocess import mark_process_dead

    pid = os.getpid()
    atexit.register(mark_process_dead, pid, mp_dir)
