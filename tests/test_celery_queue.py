"""The Celery queue against a real Redis and real Celery workers (`convkit worker`, or `celery
worker` on an app of the user's own), with an SQLite job store shared by the processes.

Every test uses its own Celery queue names, so parallel runs on one Redis never take each other's
messages; their keys are deleted afterwards. This module is also a convkit plugin (the `.flaky`
engine, whose first render of a job fails), loaded by the worker subprocesses through
``CONVKIT_PLUGINS``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")
redis = pytest.importorskip("redis")

from click.testing import CliRunner  # noqa: E402

from convkit import hookimpl  # noqa: E402
from convkit.backends.queues.celery import TASK_NAME, CeleryQueue, run_budget  # noqa: E402
from convkit.cli import main  # noqa: E402
from convkit.errors import ConfigError, ServiceUnavailable  # noqa: E402
from convkit.job import Job, JobSpec, JobState  # noqa: E402
from convkit.ports import RenderedDocument, Template, TemplateEngine  # noqa: E402
from convkit.service import ConvKit  # noqa: E402
from convkit.settings import Settings, Tenant  # noqa: E402
from convkit.testing.queue import wait_until  # noqa: E402
from convkit.testing.services import service_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TENANT = Tenant("t")
PLUGIN = __name__  # "tests.test_celery_queue"


# -- the plugin the workers load ----------------------------------------------------------------


class FlakyEngine(TemplateEngine):
    """``.flaky`` templates: the first render of a job fails (a retryable crash), later ones
    succeed. The job's ``data["marker"]`` file remembers the first attempt across processes."""

    name = "flaky"
    suffixes = {".flaky": "txt"}

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        marker = Path(data["marker"])
        if not marker.exists():
            marker.touch()
            raise RuntimeError("injected fault: the first attempt crashes")
        return RenderedDocument(template.source, "txt")


@hookimpl
def register_template_engines() -> list[TemplateEngine]:
    return [FlakyEngine()]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    return service_url("TEST_REDIS_URL", "redis://127.0.0.1:6379/0", default_port=6379)


@pytest.fixture
def env(tmp_path: Path, templates_dir: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """The environment shared by the test's kit and its workers: private queue names, an
    SQLite file, a storage folder, this module as a plugin, and no sweeping after the first."""
    (templates_dir / "flaky.flaky").write_text("second time lucky")
    suffix = uuid.uuid4().hex[:10]
    values = {
        "CONVKIT_QUEUE": "celery",
        "REDIS_URL": redis_url,
        "CELERY_QUEUE_CONVERT": f"test-convert-{suffix}",
        "CELERY_QUEUE_RENDER": f"test-render-{suffix}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "STORAGE_URL": str(tmp_path / "storage"),
        "TEMPLATES_DIR": str(templates_dir),
        "CONVKIT_PLUGINS": PLUGIN,
        # Deliveries must come from the broker: the sweeper's first round runs at start only.
        "SWEEP_INTERVAL_SECONDS": "3600",
        "OFFICE_POOL_SIZE": "1",
    }
    yield values
    client = redis.Redis.from_url(redis_url)
    try:
        for name in (values["CELERY_QUEUE_CONVERT"], values["CELERY_QUEUE_RENDER"]):
            keys = client.keys(f"*{name}*")
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def make_kit() -> Iterator[Callable[..., ConvKit]]:
    """Build ConvKits from an environment dict (plus Settings overrides); closed afterwards."""
    kits: list[ConvKit] = []

    def build(environ: dict[str, str], **overrides: Any) -> ConvKit:
        import attrs

        settings = attrs.evolve(Settings.from_env(environ), **overrides)
        kit = ConvKit.from_settings(settings, migrate=True)
        kits.append(kit)
        return kit

    yield build
    for kit in kits:
        kit.close()


class Proc:
    """A worker subprocess whose output goes to a log file; stopped with SIGTERM by its PID."""

    def __init__(self, args: list[str], environ: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        full = {**os.environ, **environ}
        full["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), str(cwd), full.get("PYTHONPATH", "")]
        )
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                args, env=full, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(environ: dict[str, str], *args: str, celery_app: str | None = None) -> Proc:
        if celery_app is None:
            cmd = [sys.executable, "-m", "convkit.cli", "worker", *args]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", celery_app, "worker", *args]
        proc = Proc(cmd, environ, tmp_path / f"worker-{len(procs)}.log", tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def _status(kit: ConvKit, job: Job) -> JobState | None:
    row = kit.store.get(job.id)
    return None if row is None else row.status


def _wait_succeeded(kit: ConvKit, job: Job, workers: list[Proc]) -> Job:
    def done() -> bool:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"worker exited: {w.log.read_text()[-3000:]}")
        return _status(kit, job) in (JobState.SUCCEEDED, JobState.FAILED)

    wait_until(done, timeout=90, what=f"job {job.id} to finish")
    row = kit.store.get(job.id)
    assert row is not None
    assert row.status is JobState.SUCCEEDED, row.error
    return row


def _messages(redis_url: str, queue: str) -> list[str]:
    """The raw messages waiting in a Celery queue (kombu keeps a Redis list per queue)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [m.decode() for m in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def _render_spec() -> JobSpec:
    return JobSpec(template="greeting", data={"name": "Ada"}, format="txt")


def _convert_spec() -> JobSpec:
    return JobSpec(
        template="page", data={"title": "T", "items": [{"name": "a", "qty": 1}]}, format="pdf"
    )


# -- settings and start-up ------------------------------------------------------------------------


def test_settings_are_read_and_checked() -> None:
    s = Settings.from_env(
        {
            "BROKER_TIMEOUT_SECONDS": "0.5",
            "CELERY_VISIBILITY_TIMEOUT_SECONDS": "7200",
            "CELERY_QUEUE_CONVERT": "pdf",
            "CELERY_QUEUE_RENDER": "html",
        }
    )
    assert (s.broker_timeout_seconds, s.celery_visibility_timeout_seconds) == (0.5, 7200)
    assert (s.celery_queue_convert, s.celery_queue_render) == ("pdf", "html")
    with pytest.raises(ConfigError, match="CELERY_QUEUE_RENDER must be a queue name"):
        Settings.from_env({"CELERY_QUEUE_RENDER": "a b"})
    with pytest.raises(ConfigError, match="BROKER_TIMEOUT_SECONDS must be"):
        Settings.from_env({"BROKER_TIMEOUT_SECONDS": "0"})


def test_a_visibility_timeout_shorter_than_a_job_is_refused_at_start() -> None:
    settings = Settings(
        queue="celery", redis_url="redis://127.0.0.1:6379/0", celery_visibility_timeout_seconds=149
    )
    assert run_budget(settings) == 60 + 30 + 60
    with pytest.raises(
        ConfigError, match=r"must be >= OFFICE_TIMEOUT_SECONDS \+ 30 \+ 60 = 150, not 149"
    ):
        CeleryQueue(settings)
    CeleryQueue(Settings(**{**_fields(settings), "celery_visibility_timeout_seconds": 150})).close()


def _fields(settings: Settings) -> dict[str, Any]:
    import attrs

    return attrs.asdict(settings, recurse=False)


def test_worker_refuses_a_short_visibility_timeout_in_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**env, "CELERY_VISIBILITY_TIMEOUT_SECONDS": "100"}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "convkit: error: CELERY_VISIBILITY_TIMEOUT_SECONDS must be >= "
        "OFFICE_TIMEOUT_SECONDS + 30 + 60 = 150, not 100"
    ]


def test_celery_options_need_the_celery_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVKIT_QUEUE", "inline")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    monkeypatch.setenv("STORAGE_URL", str(tmp_path / "storage"))
    result = CliRunner().invoke(main, ["worker", "--queues", "x"])
    assert result.exit_code == 2
    assert "need CONVKIT_QUEUE=celery" in result.output


def test_the_broker_is_required_outside_eager_mode() -> None:
    with pytest.raises(ConfigError, match="CONVKIT_QUEUE=celery needs REDIS_URL"):
        CeleryQueue(Settings(queue="celery"))


# -- publishing (real Redis, no worker) -----------------------------------------------------------


def test_jobs_are_routed_by_kind(
    env: dict[str, str], make_kit: Callable[..., ConvKit], redis_url: str
) -> None:
    kit = make_kit(env)
    render, _ = kit.submit(TENANT, _render_spec())
    convert, _ = kit.submit(TENANT, _convert_spec())
    waiting_render = _messages(redis_url, env["CELERY_QUEUE_RENDER"])
    waiting_convert = _messages(redis_url, env["CELERY_QUEUE_CONVERT"])
    assert len(waiting_render) == len(waiting_convert) == 1
    assert render.id in waiting_render[0]
    assert convert.id in waiting_convert[0]
    assert json.loads(waiting_render[0])["headers"]["task"] == TASK_NAME


def test_an_upload_goes_to_the_conversion_queue(
    env: dict[str, str], make_kit: Callable[..., ConvKit], redis_url: str, tmp_path: Path
) -> None:
    kit = make_kit(env)
    doc = tmp_path / "doc.html"
    doc.write_text("<p>hello</p>")
    with doc.open("rb") as fh:
        job, _ = kit.submit_upload(TENANT, fh, filename="doc.html", format="pdf")
    assert [job.id in m for m in _messages(redis_url, env["CELERY_QUEUE_CONVERT"])] == [True]
    assert _messages(redis_url, env["CELERY_QUEUE_RENDER"]) == []


def test_a_delay_beyond_the_countdown_limit_is_left_to_the_sweeper(
    env: dict[str, str], make_kit: Callable[..., ConvKit], redis_url: str
) -> None:
    kit = make_kit(env)
    queue = kit.queue
    assert isinstance(queue, CeleryQueue)
    assert queue.max_countdown_s == 3600 - 150
    job, _ = kit.submit(TENANT, _render_spec())
    queue.enqueue(job.id, delay_s=queue.max_countdown_s + 1)
    assert len(_messages(redis_url, env["CELERY_QUEUE_RENDER"])) == 1  # the submit's only
    queue.enqueue(job.id, delay_s=30)
    waiting = _messages(redis_url, env["CELERY_QUEUE_RENDER"])
    assert len(waiting) == 2
    assert json.loads(waiting[0])["headers"]["eta"] is not None  # newest first: the countdown


# -- the broker down ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_broker_down_refuses_the_submit_and_stores_nothing(
    env: dict[str, str], make_kit: Callable[..., ConvKit]
) -> None:
    kit = make_kit({**env, "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"})
    with pytest.raises(ServiceUnavailable, match="celery broker unavailable"):
        kit.submit(TENANT, _render_spec())
    assert kit.store.list(TENANT.name).jobs == []
    assert kit.ready()["queue"].startswith("celery broker unavailable")
    assert kit.ready()["database"] == "ok"


@pytest.mark.timeout(60)
def test_a_broker_that_never_answers_is_given_up_after_the_timeout(
    env: dict[str, str], make_kit: Callable[..., ConvKit]
) -> None:
    # A listening socket nobody accepts on: connects succeed, nothing is ever answered.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        kit = make_kit({**env, "REDIS_URL": url, "BROKER_TIMEOUT_SECONDS": "0.2"})
        with pytest.raises(ServiceUnavailable, match="celery broker unavailable"):
            kit.submit(TENANT, _render_spec())
        with pytest.raises(ServiceUnavailable):
            kit.queue.enqueue("00000000-0000-0000-0000-000000000000")
        assert kit.store.list(TENANT.name).jobs == []
        kit.close()


# -- eager mode -----------------------------------------------------------------------------------


@pytest.mark.fastapi
def test_eager_mode_answers_202_with_the_finished_job(
    env: dict[str, str],
    make_kit: Callable[..., ConvKit],
    client_factory: Callable[..., Any],
) -> None:
    environ = {k: v for k, v in env.items() if k != "REDIS_URL"}
    kit = make_kit({**environ, "CELERY_TASK_ALWAYS_EAGER": "true"}, api_keys={"k": Tenant("t")})
    client = client_factory("fastapi", kit)
    response = client.post(
        client.url("/jobs"),
        json={"template": "greeting", "data": {"name": "Ada"}, "format": "txt"},
        headers={"Authorization": "Bearer k"},
    )
    assert response.status == 202
    assert response.json()["status"] == "succeeded"
    assert kit.ready()["queue"] == "ok"  # no broker needed


# -- real workers ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.libreoffice
def test_workers_take_only_their_queues(
    env: dict[str, str],
    make_kit: Callable[..., ConvKit],
    start_worker: Callable[..., Proc],
    redis_url: str,
) -> None:
    kit = make_kit(env)
    render_worker = start_worker(env, "--queues", env["CELERY_QUEUE_RENDER"], "--concurrency", "2")
    convert, _ = kit.submit(TENANT, _convert_spec())
    render, _ = kit.submit(TENANT, _render_spec())
    _wait_succeeded(kit, render, [render_worker])
    # The render worker is consuming, yet the conversion waits for a worker of its queue.
    assert _status(kit, convert) is JobState.QUEUED
    # (Its sweeper's first round may have published it once more: to the same queue.)
    waiting = _messages(redis_url, env["CELERY_QUEUE_CONVERT"])
    assert waiting and all(convert.id in m for m in waiting)
    convert_worker = start_worker(env, "--queues", env["CELERY_QUEUE_CONVERT"], "--pool", "solo")
    done = _wait_succeeded(kit, convert, [convert_worker])
    assert done.result is not None and done.result.media_type == "application/pdf"
    assert done.attempts == 1
    with kit.storage.open(done.result.key) as fh:
        assert fh.read(5) == b"%PDF-"


@pytest.mark.slow
def test_a_retry_is_delivered_by_its_countdown(
    env: dict[str, str],
    make_kit: Callable[..., ConvKit],
    start_worker: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    kit = make_kit(env)
    worker = start_worker(env, "--queues", env["CELERY_QUEUE_RENDER"])
    marker = tmp_path / "first-attempt-ran"
    job, _ = kit.submit(
        TENANT, JobSpec(template="flaky", data={"marker": str(marker)}, format="txt")
    )
    # The sweeper sleeps an hour after its first round: only the countdown can bring it back.
    done = _wait_succeeded(kit, job, [worker])
    assert marker.exists()
    assert done.attempts == 2


USER_APP = """
import os

from celery import Celery

from convkit.backends.queues.celery import TASK_NAME  # importing it registers convkit's task

app = Celery("userapp", broker=os.environ["REDIS_URL"])
app.conf.worker_prefetch_multiplier = 1
app.conf.task_routes = {TASK_NAME: {"queue": os.environ["USER_QUEUE"]}}
"""


@pytest.mark.slow
def test_a_celery_app_of_your_own_can_route_and_run_convkit_jobs(
    env: dict[str, str],
    make_kit: Callable[..., ConvKit],
    start_worker: Callable[..., Proc],
    tmp_path: Path,
    redis_url: str,
) -> None:
    from celery import Celery

    user_queue = env["CELERY_QUEUE_RENDER"] + "-user"  # removed with the test's keys
    module = f"userapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(USER_APP))
    environ = {**env, "USER_QUEUE": user_queue}
    app = Celery("userapp", broker=redis_url, set_as_current=False)
    app.conf.task_routes = {TASK_NAME: {"queue": user_queue}}
    settings = Settings.from_env(environ)
    kit = ConvKit.from_settings(settings, queue=CeleryQueue(settings, app=app), migrate=True)
    try:
        worker = start_worker(
            environ,
            "-Q",
            user_queue,
            "--pool",
            "threads",
            "-c",
            "1",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"{module}@%h",
            celery_app=module,
        )
        marker = tmp_path / "first-attempt-ran"
        job, _ = kit.submit(
            TENANT, JobSpec(template="flaky", data={"marker": str(marker)}, format="txt")
        )
        # The retry goes through the worker's own app, so its route holds for it too.
        done = _wait_succeeded(kit, job, [worker])
        assert done.attempts == 2
        assert _messages(redis_url, env["CELERY_QUEUE_RENDER"]) == []
    finally:
        kit.close()
        app.close()


def test_the_celery_queue_is_registered_with_its_extra() -> None:
    from convkit import get_plugin_manager
    from convkit.backends.queues.celery import create_celery_queue
    from convkit.registry import Registry

    spec = Registry.from_hook_results("queue", get_plugin_manager().hook.register_queues()).get(
        "celery"
    )
    assert spec.extra == "celery"
    assert spec.load() is create_celery_queue
    assert (CeleryQueue.consumes_in_process, CeleryQueue.durable_delay) == (False, True)
    assert CeleryQueue.redelivers
