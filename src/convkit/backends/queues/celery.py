"""The Celery queue (``CONVKIT_QUEUE=celery``, ``pip install 'convkit[celery]'``): job ids published
as the task ``convkit.run_job`` on Redis (``REDIS_URL``), run by ``convkit worker`` (a Celery
worker) or by a Celery app of your own.

The database stays the truth: there is no result backend, a message carries a job id only, and the
job store's claim and attempt fence make every duplicate delivery a no-op. Capabilities:

- ``consumes_in_process = False``: the consumer is a Celery worker (``convkit worker``), never
  ``Queue.start``.
- ``durable_delay = True``: a retry's backoff is published at once with Celery's ``countdown`` and
  kept by the broker, *when* ``delay + run budget <= CELERY_VISIBILITY_TIMEOUT_SECONDS`` (the Redis
  transport holds a countdown message unacknowledged until it runs, so a longer one would be
  delivered twice). A longer delay is not published: the row's not-before time and the sweeper
  run it then. In eager mode countdowns are skipped, as Celery's eager mode does.
- ``redelivers = True``: the task is acknowledged after it returns (``acks_late``) and a worker
  process that dies mid-job rejects it (``reject_on_worker_lost``), so Redis delivers it again
  once ``CELERY_VISIBILITY_TIMEOUT_SECONDS`` passed, to any worker consuming that queue.

Start-up refuses ``CELERY_VISIBILITY_TIMEOUT_SECONDS < OFFICE_TIMEOUT_SECONDS + MAX_RENDER_SECONDS +
START_MARGIN_S`` (the run budget): a job still running when its message becomes visible again
is delivered to a second worker, which finds it leased and drops it, but only after the wait.

Routing: jobs that need a converter (an upload, or a template rendered to another format: the
LibreOffice work) go to ``CELERY_QUEUE_CONVERT``, the others to ``CELERY_QUEUE_RENDER``, so
conversion workers are sized apart. The job kind is read from the row through the kit the queue
is attached to (:meth:`CeleryQueue.attach`); a route for ``convkit.run_job`` in the app's own
``task_routes`` wins over both.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Celery, shared_task, signals
from celery.worker import state as worker_state

from convkit.errors import ConfigError, ServiceUnavailable
from convkit.ports import Queue
from convkit.settings import Settings
from convkit.templating.scope import MAX_RENDER_SECONDS

if TYPE_CHECKING:
    from convkit.service import ConvKit

__all__ = [
    "POOLS",
    "START_MARGIN_S",
    "TASK_NAME",
    "CeleryQueue",
    "create_celery_queue",
    "run_job",
    "run_worker",
]

log = logging.getLogger("convkit.queue")

#: The one task convkit publishes; its only argument is the job id.
TASK_NAME = "convkit.run_job"
#: Slack in the run budget for starting a fresh LibreOffice process (the pool's start timeout).
START_MARGIN_S = 60.0
#: kombu's Redis visibility timeout when an app sets none.
_KOMBU_VISIBILITY_S = 3600.0
#: Pools ``convkit worker`` offers: both keep one LibreOffice pool per worker process.
POOLS = ("threads", "solo")


def run_budget(settings: Settings) -> float:
    """Longest time one attempt may hold its message, in seconds: ``OFFICE_TIMEOUT_SECONDS +
    MAX_RENDER_SECONDS + START_MARGIN_S``."""
    return settings.office_timeout_seconds + MAX_RENDER_SECONDS + START_MARGIN_S


def make_app(settings: Settings) -> Celery:
    """convkit's own Celery app: broker ``REDIS_URL``, no result backend, late acks, prefetch 1,
    every broker wait bounded by ``BROKER_TIMEOUT_SECONDS``."""
    timeout = settings.broker_timeout_seconds
    broker = settings.redis_url or "memory://"  # eager mode needs no broker
    app = Celery("convkit", broker=broker, set_as_current=False)
    app.conf.update(
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_always_eager=settings.celery_task_always_eager,
        task_default_queue=settings.celery_queue_render,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,  # the worker waits for the broker at start
        # Reconnect for as long as the broker is down (Celery's default gives up after 100
        # tries, about 45 minutes): the runbook's workers resume when Redis returns.
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout_seconds,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # A channel's own connect: one immediate retry, never kombu's 2 s back-off.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0,
            "interval_max": 0,
        },
        # One quick retry covers a pooled connection that died with a Redis restart; a broker
        # that is really down costs a submit at most about twice the timeout, then a 503.
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0,
            "interval_max": 0,
        },
        worker_hijack_root_logger=False,  # convkit's JSON logs stay as configured
        worker_send_task_events=False,
    )
    return app


class CeleryQueue(Queue):
    """Publishes ``convkit.run_job(job_id)`` through a Celery app (convkit's own, or ``app``).

    :param settings: ``REDIS_URL`` (required unless ``CELERY_TASK_ALWAYS_EAGER``), the timeouts
        and the two queue names.
    :param app: a Celery app of your own to publish through; its ``task_routes`` may route
        ``convkit.run_job``, and its own configuration applies (the task itself declares late
        acks, reject-on-worker-lost and no result).
    :raises ConfigError: no ``REDIS_URL`` outside eager mode, or a visibility timeout shorter
        than :func:`run_budget`.
    """

    name = "celery"
    consumes_in_process = False
    durable_delay = True
    redelivers = True

    def __init__(self, settings: Settings, *, app: Celery | None = None) -> None:
        eager = settings.celery_task_always_eager
        if app is None and not eager and not settings.redis_url:
            raise ConfigError(
                "CONVKIT_QUEUE=celery needs REDIS_URL (the broker), e.g. redis://localhost:6379/0"
            )
        app = app if app is not None else make_app(settings)
        options = app.conf.broker_transport_options or {}
        visibility = float(options.get("visibility_timeout", _KOMBU_VISIBILITY_S))
        budget = run_budget(settings)
        if visibility < budget:
            raise ConfigError(
                f"CELERY_VISIBILITY_TIMEOUT_SECONDS must be >= OFFICE_TIMEOUT_SECONDS + "
                f"{MAX_RENDER_SECONDS:g} + {START_MARGIN_S:g} = {budget:g}, not {visibility:g}"
            )
        self.settings = settings
        self.app = app
        self.task = app.tasks[TASK_NAME]
        #: The longest countdown published; longer delays are left to the sweeper.
        self.max_countdown_s = visibility - budget
        self._kit: ConvKit | None = None

    @property
    def eager(self) -> bool:
        return bool(self.app.conf.task_always_eager)

    def run_worker(
        self,
        kit: ConvKit,
        *,
        queues: Sequence[str] = (),
        concurrency: int = 0,
        pool: str | None = None,
    ) -> int:
        """A Celery worker on ``kit`` (see :func:`run_worker`)."""
        return run_worker(kit, queues=queues, concurrency=concurrency, pool=pool or "threads")

    @property
    def completes_on_enqueue(self) -> bool:  # type: ignore[override]
        """In eager mode the job has run when ``enqueue`` returns."""
        return self.eager

    def attach(self, kit: ConvKit) -> None:
        """Called by :class:`ConvKit` with itself: routing reads job rows through it, and eager
        mode runs jobs on it."""
        self._kit = kit

    def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
        """Publish the job (or run it now in eager mode); a delay longer than
        :attr:`max_countdown_s` publishes nothing (the sweeper runs it when due).

        :raises ServiceUnavailable: the broker did not answer within the timeout.
        """
        if delay_s > self.max_countdown_s and not self.eager:
            log.info(
                "retry delay longer than the countdown limit: left to the sweeper",
                extra={"job_id": job_id, "delay_s": delay_s},
            )
            return
        options: dict[str, Any] = {"countdown": delay_s} if delay_s > 0 else {}
        if not self._app_routes(job_id):
            options["queue"] = self.queue_for(job_id)
        try:
            with _running_on(self._kit if self.eager else None):
                self.task.apply_async((job_id,), **options)
        except Exception as exc:  # kombu's OperationalError, redis' errors, socket timeouts
            raise ServiceUnavailable(f"celery broker unavailable: {exc}") from exc

    def _app_routes(self, job_id: str) -> bool:
        # NOTE: Router.lookup_route is what Celery's own routing calls; an app without
        # task_routes (convkit's own) has no routers, and convkit's split applies.
        router = self.app.amqp.router
        return bool(router.routes) and router.lookup_route(TASK_NAME, (job_id,), {}, {}) is not None

    def queue_for(self, job_id: str) -> str:
        """``CELERY_QUEUE_CONVERT`` for a job that needs a converter, else ``CELERY_QUEUE_RENDER``.
        Unattached, or when the row cannot be read, the conversion queue (whose workers run
        anything)."""
        convert, render = self.settings.celery_queue_convert, self.settings.celery_queue_render
        kit = self._kit
        if kit is None:
            return convert
        try:
            job = kit.store.get(job_id)
            if job is None:  # deleted: the task will find nothing to do
                return render
            if job.spec.source is not None or job.template is None:
                return convert
            return convert if kit.templates.load(job.template).format != job.format else render
        except Exception:
            log.warning("cannot classify job; routed for conversion", extra={"job_id": job_id})
            return convert

    def check(self) -> None:
        """Ping the broker (bounded by ``BROKER_TIMEOUT_SECONDS``); nothing in eager mode.

        :raises ServiceUnavailable: the broker did not answer.
        """
        if self.eager:
            return
        try:
            # A pooled connection, as publishing uses: no new socket per submit.
            with self.app.connection_or_acquire() as conn:
                conn.default_channel.client.ping()
        except Exception as exc:
            raise ServiceUnavailable(f"celery broker unavailable: {exc}") from exc

    def close(self) -> None:
        """Release the app's broker connections."""
        self.app.close()


def create_celery_queue(settings: Settings) -> CeleryQueue:
    """Factory for ``CONVKIT_QUEUE=celery`` (see :class:`CeleryQueue`)."""
    return CeleryQueue(settings)


# -- the task and the kit it runs on ----------------------------------------------------------

_eager_kit: contextvars.ContextVar[ConvKit | None] = contextvars.ContextVar(
    "convkit_eager_kit", default=None
)
_lock = threading.Lock()
_process_kit: ConvKit | None = None
_owned = False  # built here (closed at worker shutdown), not handed over by `convkit worker`
_kit_pid: int | None = None  # the process _process_kit belongs to


@contextmanager
def _running_on(kit: ConvKit | None) -> Iterator[None]:
    token = _eager_kit.set(kit)
    try:
        yield
    finally:
        _eager_kit.reset(token)


def _kit_for_task(app: Celery) -> ConvKit:
    """The submitting kit in eager mode; else this process's kit, built once from the
    environment's settings when ``convkit worker`` did not hand one over. Built here under
    ``CONVKIT_QUEUE=celery``, its retries publish through ``app`` (the worker's own, with its
    routes)."""
    global _process_kit, _owned, _kit_pid
    kit = _eager_kit.get()
    if kit is not None:
        return kit
    with _lock:
        if _process_kit is None:
            from convkit.service import ConvKit

            settings = Settings.from_env()
            queue = CeleryQueue(settings, app=app) if settings.queue == "celery" else None
            _process_kit = ConvKit.from_settings(settings, queue=queue, migrate=True)
            _owned, _kit_pid = True, os.getpid()
        return _process_kit


def _run_job(task: Any, job_id: str) -> None:
    """Run one attempt of ``job_id`` (:meth:`convkit.runner.Runner.run_job`). A failed attempt
    is recorded on the row and retried by convkit, never by Celery."""
    _kit_for_task(task.app).runner.run_job(job_id)


#: The Celery task (a shared task: every Celery app in a process that imports this module has it).
#: Late acks, reject-on-worker-lost and no result are the task's own options, so they hold in
#: a Celery app of your own too.
run_job: Any = shared_task(
    bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)(_run_job)


def _forget_parent_kit(**_: object) -> None:
    # A prefork child must not share its parent's database connections or office pool:
    # it builds its own kit on its first task (the parent's stays the parent's to close).
    # The solo pool sends this signal in the worker's own process: nothing to forget there.
    global _process_kit, _owned
    if _kit_pid != os.getpid():
        _process_kit, _owned = None, False


def _close_process_kit(**_: object) -> None:
    global _process_kit, _owned
    with _lock:
        kit, owned = _process_kit, _owned
        _process_kit, _owned = None, False
    if kit is not None and owned:
        kit.close()


signals.worker_process_init.connect(_forget_parent_kit, weak=False)
signals.worker_process_shutdown.connect(_close_process_kit, weak=False)
signals.worker_shutdown.connect(_close_process_kit, weak=False)


# -- `convkit worker` -------------------------------------------------------------------------


class _Grace:
    """Bounds Celery's warm shutdown by ``SHUTDOWN_GRACE_SECONDS``, counted from the signal.

    Celery's warm shutdown (SIGTERM, a first SIGINT) stops consuming at once, then waits for the
    running tasks however long they take. At the end of the grace this hands back what still
    runs (:meth:`convkit.runner.Runner.release_running`) and stops the converters, which kills
    LibreOffice: those tasks then return, Celery acknowledges their messages (late acks) and its
    warm shutdown completes. (Celery's cold shutdown, a second SIGINT or SIGQUIT, cancels tasks
    by killing their process, which the threads and solo pools cannot do: Celery logs
    ``NotImplementedError`` and carries on waiting, still bounded by this grace if a warm
    shutdown started it.)
    """

    def __init__(self, kit: ConvKit, hostname: str) -> None:
        self.kit = kit
        self.hostname = hostname
        self._wake = threading.Event()
        self._over = False
        self._thread: threading.Thread | None = None
        #: The stop began as a warm shutdown (SIGTERM, a first SIGINT).
        self.warm = False

    def signalled(self, sender: object = None, how: str = "", **_: object) -> None:
        """Celery's ``worker_shutting_down`` (sent from its signal handler, in the main thread)."""
        if sender != self.hostname or self._thread is not None:  # a second signal: no change
            return
        self.warm = how == "Warm"
        self._thread = threading.Thread(target=self._run, name="convkit-grace", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._wake.wait(self.kit.settings.shutdown_grace_seconds)
        if self._over:  # every task ended within the grace
            return
        released = self.kit.runner.release_running()
        if released:
            log.warning("jobs handed back at the end of the grace", extra={"job_ids": released})
            self.kit.converters.shutdown()

    def finish(self) -> list[str]:
        """Celery's worker has stopped: end the timer; return the ids of the jobs handed back
        (at the end of the grace, or claimed after it)."""
        self._over = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        return self.kit.runner.handed_back()


def _publish_again(kit: ConvKit, job_ids: Sequence[str]) -> None:
    # Handed-back jobs are queued with no lease, but their messages were acknowledged: publish
    # them for another worker now rather than leave them to the next sweep.
    for job_id in job_ids:
        try:
            kit.queue.enqueue(job_id)
        except ServiceUnavailable:
            log.warning(
                "handed-back job not published: left to the sweeper", extra={"job_id": job_id}
            )


def run_worker(
    kit: ConvKit,
    *,
    queues: Sequence[str] = (),
    concurrency: int = 0,
    pool: str = "threads",
) -> int:
    """Run a Celery worker on ``kit`` until SIGTERM/SIGINT; return its exit code (0 after a
    graceful stop).

    The stop is Celery's warm shutdown bounded by ``SHUTDOWN_GRACE_SECONDS`` (:class:`_Grace`):
    no new task is taken, running jobs get the grace, those still running then are handed back
    (queued again, attempt not counted) and their messages acknowledged; once Celery's worker
    has stopped, the handed-back jobs are published again for other workers.

    :param queues: Celery queues to consume (default: both convkit queues).
    :param concurrency: jobs at once (default: the LibreOffice pool size, so each thread has a
        warm office).
    :param pool: ``threads`` (one process, one office pool shared by its threads) or ``solo``.
    Beside it run convkit's sweeper thread and, when the worker consumes the conversion queue,
    the office pool's warm-up.
    """
    from convkit.worker import Worker

    global _process_kit, _owned, _kit_pid
    if not isinstance(kit.queue, CeleryQueue):
        raise ConfigError("convkit worker's Celery mode needs CONVKIT_QUEUE=celery")
    if pool not in POOLS:
        raise ConfigError(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    settings = kit.settings
    queues = list(queues) or [settings.celery_queue_convert, settings.celery_queue_render]
    concurrency = concurrency or settings.office_pool_size or os.cpu_count() or 1
    with _lock:
        _process_kit, _owned, _kit_pid = kit, False, os.getpid()
    helper = Worker(kit, warm_up=settings.celery_queue_convert in queues)
    helper.start()  # the sweeper and the warm-up; Celery consumes
    try:
        # Celery logs two lines per task; convkit's job lines say it all.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
        worker = kit.queue.app.Worker(
            hostname=f"convkit-{os.getpid()}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
            queues=queues,
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=1,
            without_mingle=True,
            without_gossip=True,
            loglevel="INFO",
            quiet=True,
        )
        grace = _Grace(kit, worker.hostname)
        signals.worker_shutting_down.connect(grace.signalled, weak=False)
        try:
            worker.start()
        finally:
            signals.worker_shutting_down.disconnect(grace.signalled)
            # Published once Celery stopped consuming, so this worker cannot take them again.
            _publish_again(kit, grace.finish())
        # Celery exits 1 after a Ctrl-C even when its warm shutdown went well; a stop asked
        # for with SIGTERM or SIGINT that ended gracefully is a success. A cold shutdown that
        # was attempted (a second Ctrl-C, SIGQUIT) keeps Celery's code.
        if grace.warm and worker_state.should_terminate in (None, False):
            return 0
        return int(worker.exitcode or 0)
    finally:
        helper.stop()
        with _lock:
            _process_kit = None
