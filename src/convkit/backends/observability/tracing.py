"""OpenTelemetry spans of a worker's attempt, continuing the trace of the submit request.

Installed per instance only when OpenTelemetry is importable and the process configured a
tracer provider (``opentelemetry.trace.set_tracer_provider``) before the kit was built;
otherwise nothing is registered and jobs pay nothing. The submit request's W3C
``traceparent`` (of the server's span for it when there is one, else the request's header) is
stored with the job; a worker's spans are::

    <the submit request's span>
      convkit.job        (one attempt: claim to outcome; error status when it failed)
        convkit.claim, convkit.render, convkit.convert, convkit.store

The steps are reported after they ran (the ``phase_finished`` event), so their spans are
recorded with the measured start and end times.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from convkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from convkit.job import Job, JobError
    from convkit.service import ConvKit

__all__ = ["PLUGIN_NAME", "KitTracing", "configured_provider", "install"]

#: The name a kit's :class:`KitTracing` is registered under on its plugin manager.
PLUGIN_NAME = "convkit.tracing"
#: Attempts whose outcome was never reported (fenced out) are ended beyond this many open spans.
MAX_OPEN_ATTEMPTS = 10_000


def configured_provider() -> TracerProvider | None:
    """The process's tracer provider, or None when OpenTelemetry is absent or unconfigured."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def install(kit: ConvKit) -> KitTracing | None:
    """Register a :class:`KitTracing` on ``kit``'s plugin manager when tracing is configured."""
    provider = configured_provider()
    if provider is None or kit.pm.get_plugin(PLUGIN_NAME) is not None:
        return None
    tracing = KitTracing(provider)
    kit.pm.register(tracing, name=PLUGIN_NAME)
    return tracing


def _attributes(job: Job) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "convkit.job_id": job.id,
        "convkit.user_id": job.tenant,
        "convkit.format": job.format,
        "convkit.attempt": job.attempts,
    }
    if job.template is not None:
        attrs["convkit.template"] = job.template
    if job.request_id is not None:
        attrs["convkit.request_id"] = job.request_id
    return attrs


class KitTracing:
    """Records an attempt's spans under the job's stored ``traceparent``."""

    def __init__(self, provider: TracerProvider) -> None:
        from convkit._version import __version__

        self.tracer: Tracer = provider.get_tracer("convkit", __version__)
        self._open: dict[tuple[str, int], Span] = {}
        self._lock = threading.Lock()

    def _remote_parent(self, job: Job) -> Context | None:
        """The submit request's context (None: the attempt starts a trace of its own)."""
        if job.traceparent is None:
            return None
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})

    @hookimpl
    def current_traceparent(self) -> str | None:
        """The active span's context (FastAPI, or an instrumented server, made one for the
        request), as the W3C header."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return carrier.get("traceparent")

    @hookimpl
    def phase_finished(self, job: Job, phase: str, duration_s: float) -> None:
        from opentelemetry import trace

        end = time.time_ns()
        start = end - int(duration_s * 1e9)
        key = (job.id, job.attempts)
        with self._lock:
            attempt = self._open.get(key)
            if attempt is None:
                # The claim is an attempt's first step: its span opens the attempt's.
                attempt = self.tracer.start_span(
                    "convkit.job",
                    context=self._remote_parent(job),
                    attributes=_attributes(job),
                    start_time=start,
                )
                self._open[key] = attempt
                if len(self._open) > MAX_OPEN_ATTEMPTS:
                    self._open.pop(next(iter(self._open))).end()
        step = self.tracer.start_span(
            f"convkit.{phase}",
            context=trace.set_span_in_context(attempt),
            attributes=_attributes(job),
            start_time=start,
        )
        step.end(end_time=end)

    def _end(self, job: Job, error: JobError | None) -> None:
        with self._lock:
            span = self._open.pop((job.id, job.attempts), None)
        if span is None:  # the sweeper failing a dead worker's job: no attempt here
            return
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("convkit.error_code", error.code)
            span.set_status(Status(StatusCode.ERROR, error.code))
        span.end()

    @hookimpl
    def job_succeeded(self, job: Job) -> None:
        self._end(job, None)

    @hookimpl
    def job_failed(self, job: Job, error: JobError) -> None:
        self._end(job, error)
