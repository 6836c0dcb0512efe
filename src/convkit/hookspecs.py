"""Every pluggy hook convkit calls, grouped and documented.

Plugins implement them with ``from convkit import hookimpl``. Built-in backends are plugins too
(``convkit.plugins.DEFAULT_PLUGINS``) and use exactly these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from convkit.job import Job, JobError
    from convkit.ports import Converter, DoctorCheck, TemplateEngine
    from convkit.registry import BackendSpec
    from convkit.service import ConvKit
    from convkit.settings import Setting, Settings

hookspec = pluggy.HookspecMarker("convkit")
hookimpl = pluggy.HookimplMarker("convkit")


# --------------------------------------------------------------------------------------------------
# Settings: the environment variables a plugin reads, declared so they are validated at start-up,
# documented and shown by ``convkit doctor``.


@hookspec
def register_settings() -> list[Setting]:
    """Return the environment variables this plugin reads, as :class:`convkit.settings.Setting`.

    Called once each time a plugin manager's settings are bound: by ``ConvKit.from_settings``,
    ``convkit.render``/``convert`` and ``convkit doctor``, before any other hook gets
    ``settings``. Every value is parsed and validated then, so a bad one stops start-up with
    one line naming the variable; read it with ``settings.get("MY_PLUGIN_TIMEOUT_SECONDS")``.
    A name declared twice (by two plugins, or one convkit declares) is an error at start-up.

    :return: a list of Setting (empty to declare none). Leave ``field`` unset: it names an
        attribute of core settings only.
    """


# --------------------------------------------------------------------------------------------------
# Registration hooks: each returns a list, results of every plugin are concatenated.


@hookspec
def register_template_engines(settings: Settings) -> list[TemplateEngine]:
    """Return template engines this plugin provides.

    Called once per :class:`convkit.ConvKit` (and per :func:`convkit.render` call) when the engine
    table is built. Each engine declares the file suffixes it renders (``{".html": "html"}``).
    Two engines claiming one suffix is an error at start-up, never a silent override.

    :param settings: the instance's settings (declare the argument only if you need it).

    :return: a list of :class:`convkit.ports.TemplateEngine` instances (empty to add none).
    """


@hookspec
def register_converters(settings: Settings, hook: pluggy.HookRelay) -> list[Converter]:
    """Return document converters this plugin provides.

    :param settings: the instance's settings, e.g. ``office_timeout_seconds`` (declare the argument
        only if you need it).
    :param hook: the instance's hook relay, for converters that report events
        (``hook.conversion_finished(...)``, see the converter events below).

    Called once per :class:`convkit.ConvKit` when the converter table is built. For a
    (source, target) pair the first converter whose ``targets(source)`` contains the target wins,
    in plugin registration order (third-party plugins are registered after the built-ins, and
    pluggy calls later-registered plugins first, so a plugin can take over a pair).

    :return: a list of :class:`convkit.ports.Converter` instances.
    """


@hookspec
def register_storages() -> list[BackendSpec]:
    """Return storage backends, by URL scheme, as lazy :class:`convkit.registry.BackendSpec`.

    Called once per plugin manager. ``BackendSpec.name`` is the URL scheme (``"memory"``,
    ``"s3"``); the spec's factory is imported only when ``STORAGE_URL`` names it, and receives
    ``(url, settings)``. The ``"*"`` name is the fallback for any scheme (fsspec).

    :return: a list of BackendSpec.
    """


@hookspec
def register_job_stores() -> list[BackendSpec]:
    """Return job-store backends, by ``DATABASE_URL`` scheme (``"sqlite"``, ``"postgresql"``).

    The factory receives ``(url, settings, clock=clock)``; ``clock`` is the
    :data:`convkit.ports.Clock` the store must use for every timestamp. Called once per plugin
    manager.

    :return: a list of BackendSpec.
    """


@hookspec
def register_queues() -> list[BackendSpec]:
    """Return queue backends, by the name ``CONVKIT_QUEUE`` selects (``"inline"``, ``"redis"``).

    The factory receives ``(settings,)``. Called once per plugin manager.

    :return: a list of BackendSpec.
    """


# --------------------------------------------------------------------------------------------------
# Health: each returns a list, results of every plugin are concatenated.


@hookspec
def doctor_checks(kit: ConvKit) -> list[DoctorCheck]:
    """Return checks of what this plugin's backends need, for ``convkit doctor`` and readiness.

    Called by ``convkit doctor`` (which prints every check's name and detail) and by
    :meth:`convkit.ConvKit.ready` on every ``GET /ready`` (which runs only the checks marked
    ``readiness=True``, so keep those cheap). Find your backend's instance on ``kit``
    (``kit.converters``, ``kit.queue``, ``kit.storage``, ``kit.store``); return an empty list when
    the instance does not use your backend.

    :param kit: the :class:`convkit.ConvKit` instance being checked.

    :return: a list of :class:`convkit.ports.DoctorCheck` (empty to add none).
    """


# --------------------------------------------------------------------------------------------------
# Instance: per-instance state (metrics, tracing) lives in an object a plugin registers here.


@hookspec
def kit_created(kit: ConvKit) -> None:
    """Called once when a :class:`convkit.ConvKit` was built, with every backend in place.

    A plugin keeping state per instance (a metrics registry, a tracer) builds an object holding
    it and registers it on the instance's plugin manager, ``kit.pm.register(obj, name=...)``,
    so its hookimpls receive this instance's events only. An exception raised here is logged and
    swallowed, like an event's.

    :param kit: the new instance.
    """


@hookspec(firstresult=True)
def metrics_exposition(kit: ConvKit) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """Return the answer to ``GET /metrics`` for ``kit``: ``(status, headers, body)``.

    Stops at the first non-None result. Called on every scrape of ``convkit serve``'s
    ``/metrics`` (after its ``METRICS_TOKEN`` check), of an adapter's mounted metrics route, and
    of a worker's ``HEALTH_PORT``. The built-in observability plugin answers with the Prometheus
    text exposition when ``convkit[metrics]`` is installed.

    :param kit: the :class:`convkit.ConvKit` instance being scraped.

    :return: ``(status, headers, body)``, or None to decline (no plugin answering: ``404``).
    """


# --------------------------------------------------------------------------------------------------
# Lifecycle events: called for their side effects (metrics, audit logs, webhooks); return values
# are ignored. An exception raised by one is logged and swallowed, so a broken plugin never
# fails a job.


@hookspec
def job_submitted(job: Job) -> None:
    """Called once after a new job was stored and enqueued (not for an idempotent replay).

    :param job: the job, in state ``queued``.
    """


@hookspec
def job_started(job: Job) -> None:
    """Called each time a worker claims a job, so once per attempt.

    :param job: the job, in state ``running``; ``job.attempts`` is this attempt's number.
    """


@hookspec
def job_succeeded(job: Job, duration_s: float) -> None:
    """Called once when a job's artifact is stored and the job is ``succeeded``.

    :param job: the finished job, with ``job.result``.
    :param duration_s: wall time of the successful attempt, in seconds.
    """


@hookspec
def job_failed(job: Job, error: JobError, will_retry: bool) -> None:
    """Called when an attempt fails.

    :param job: the job as it was when the attempt failed.
    :param error: code and message of the failure.
    :param will_retry: True if the job was queued again, False if it is now ``failed``.
    """


@hookspec
def job_deleted(job: Job) -> None:
    """Called once after a job's row and artifact were deleted (by a client or by cleanup).

    :param job: the job as it was before deletion.
    """


@hookspec
def phase_finished(job: Job, phase: str, duration_s: float) -> None:
    """Called by a worker after each step of an attempt, whether it succeeded or raised.

    :param job: the job being run (state ``running``; ``job.attempts`` is this attempt).
    :param phase: ``"claim"`` (taking the job from the store), ``"render"`` (the template
        engine), ``"convert"`` (the converter) or ``"store"`` (writing the artifact).
    :param duration_s: wall time of the step, in seconds.
    """


# --------------------------------------------------------------------------------------------------
# Tracing


@hookspec(firstresult=True)
def current_traceparent() -> str | None:
    """Return the W3C ``traceparent`` of the span active in this thread, or None.

    Called by the HTTP API when it accepts a job: the answer is stored with the job, so a
    worker's spans continue the trace of the request that submitted it (a tracing plugin
    answers when the server itself made a span for the request). The first non-None answer
    wins; when no plugin answers, the request's own ``traceparent`` header is stored.
    """


# --------------------------------------------------------------------------------------------------
# HTTP events: called by the neutral HTTP layer, so every adapter reports the same.


@hookspec
def request_finished(method: str, route: str, status: int, duration_s: float) -> None:
    """Called after the API (or ``/metrics``) answered a request, before a streamed body is sent.

    :param method: ``"GET"``, ``"POST"`` ...
    :param route: the route's template, never the raw path (``"/jobs/{job_id}"``;
        ``"/metrics"``; ``"unmatched"`` when no route matched), so it stays a bounded label.
    :param status: the response's status code.
    :param duration_s: time spent answering, in seconds.
    """


# --------------------------------------------------------------------------------------------------
# Converter events: reported by converters (the LibreOffice pool) for metrics. Return values are
# ignored; an exception raised by one is logged and swallowed.


@hookspec
def conversion_finished(
    converter: str, source_format: str, target_format: str, duration_s: float, outcome: str
) -> None:
    """Called after every conversion attempt a converter made.

    :param converter: the converter's name (``"libreoffice"``).
    :param source_format: e.g. ``"docx"``.
    :param target_format: e.g. ``"pdf"``.
    :param duration_s: wall time of the attempt, in seconds.
    :param outcome: ``"ok"``, ``"error"`` (the document failed), ``"timeout"`` or ``"crash"``.
    """


@hookspec
def converter_process_restarted(converter: str, reason: str) -> None:
    """Called when a converter replaced one of its worker processes.

    :param converter: the converter's name.
    :param reason: ``"timeout"``, ``"crash"``, ``"unhealthy"`` (failed its health probe),
        ``"max_tasks"`` or ``"max_rss"`` (recycled).
    """


@hookspec
def converter_pool_changed(converter: str, busy: int, idle: int) -> None:
    """Called when a converter's pool of worker processes changes occupancy.

    :param converter: the converter's name.
    :param busy: processes converting a document now.
    :param idle: processes ready for the next document.
    """
