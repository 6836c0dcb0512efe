"""The production shape, for real: API replicas and separate workers as processes, PostgreSQL, a
private Redis, one shared storage folder; jobs over HTTP, then the faults a deployment meets.

Each test runs over :data:`QUEUES`; a queue whose backend no plugin registers is skipped. The
``inline`` queue runs too, marked ``sweeper_only``: with ``serve`` at ``WORKER_THREADS=0`` its
jobs reach the separate workers only through their sweepers (every ``SWEEP_INTERVAL_SECONDS``),
which proves the harness and documents how separate workers found jobs before real brokers.

``TOPOLOGY_JOBS`` (default 100) sets the size of the main batch.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from convkit.backends.jobstores.sql.store import create_job_store
from convkit.testing.topology import RedisServer, Topology, queue_registered
from tests.conftest import S3_BUCKET
from tests.fixtures.office.support import require_soffice
from tests.topology_plugin import read_events

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "templates"

#: The queues a topology runs on; the ones not merged yet are skipped.
QUEUES = ["redis", "celery"]
_QUEUE_PARAMS = [
    *(pytest.param(q, id=q) for q in QUEUES),
    pytest.param("inline", id="inline-sweeper", marks=pytest.mark.sweeper_only),
]

JOBS = int(os.environ.get("TOPOLOGY_JOBS", "100"))

# The sweeper is how inline jobs reach separate workers at all; with a broker it only recovers.
_SWEEP = {"inline": "0.2"}
# What a worker logs once it consumes; a Celery worker prints its own banner, and jobs wait in
# the broker until it is up, so the topology does not wait for it.
_READY: dict[str, str | None] = {"celery": None}


@pytest.fixture(params=_QUEUE_PARAMS)
def queue(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if not queue_registered(name):
        pytest.skip("backend not merged yet")
    return name


class Deployment:
    """A topology plus what the tests read back: the events file and the job store."""

    def __init__(self, topo: Topology, events: Path, db_url: str) -> None:
        self.topo = topo
        self.events = events
        self.store = create_job_store(db_url)

    def count(self, event: str) -> Counter[str]:
        return Counter(key for name, key, _, _ in read_events(self.events) if name == event)

    def pids(self, event: str, key: str) -> list[int]:
        return [pid for name, k, _, pid in read_events(self.events) if (name, k) == (event, key)]

    def submit(self, body: dict[str, Any] | None = None, **kw: Any) -> str:
        response = self.topo.submit(body, **kw)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def upload(self, text: str) -> str:
        return self.submit(upload=("doc.txt", text.encode()), form={"format": "pdf"})

    def check_succeeded_once(
        self, jobs: dict[str, dict[str, Any]], *, attempts: dict[str, int] | None = None
    ) -> None:
        """Each job succeeded (after ``attempts[id]`` attempts, else one), one success event,
        one result in the job store and exactly one artifact (an upload is deleted once its job
        succeeded, KEEP_UPLOADS being off); downloadable as a PDF from every API."""
        # The job_succeeded event is written just after the row commits: a poll can see the
        # row first, so give the events a moment to catch up.
        deadline = time.monotonic() + 10
        succeeded = self.count("succeeded")
        while any(succeeded[k] == 0 for k in jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
            succeeded = self.count("succeeded")
        for job_id, job in jobs.items():
            assert (job["status"], job["error"]) == ("succeeded", None), job
            assert job["attempts"] == (attempts or {}).get(job_id, 1), job
            assert succeeded[job_id] == 1, job
            stored = self.store.get(job_id)
            assert stored is not None and stored.result is not None
            prefix = f"{stored.tenant}/{job_id}"
            assert self.topo.stored_files(prefix) == [stored.result.key]
            for api in range(len(self.topo.apis)):
                response = self.topo.download(job_id, api=api)
                assert response.status_code == 200, response.text
                assert response.content.startswith(b"%PDF")

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def deploy(tmp_path: Path, pg_url: str, queue: str) -> Iterator[Callable[..., Deployment]]:
    """Start a topology: 2 APIs (WORKER_THREADS=0) and 2 workers (one LibreOffice process each,
    3 s leases) on ``queue``; keyword ``env`` adds settings for every process. Its logs are
    printed when the test fails; every process is gone afterwards."""
    require_soffice()
    templates = tmp_path / "templates"
    templates.mkdir()
    for name in ("invoice.html", "invoice_docx.docx"):
        shutil.copy(EXAMPLES / name, templates / name)
    made: list[Deployment] = []

    def make(
        *,
        env: dict[str, str] | None = None,
        workers: int = 2,
        s3: dict[str, Any] | None = None,
    ) -> Deployment:
        root = tmp_path / f"topology-{len(made)}"
        events = root / "events.log"
        settings = {
            "CONVKIT_PLUGINS": "tests.topology_plugin",
            "TOPOLOGY_EVENTS": str(events),
            "SWEEP_INTERVAL_SECONDS": _SWEEP.get(queue, "1"),
            "JOB_LEASE_SECONDS": "3",
            "OFFICE_POOL_SIZE": "1",
            **(env or {}),
        }
        topo = Topology(
            root,
            database_url=pg_url,
            templates_dir=templates,
            queue=queue,
            redis=queue != "inline",
            env=settings,
            pythonpath=[str(ROOT)],
            worker_ready=_READY.get(queue, "worker started"),
            storage_url=f"s3://{S3_BUCKET}/topology-{len(made)}" if s3 is not None else None,
            storage_options=s3,
        )
        deployment = Deployment(topo, events, pg_url)
        made.append(deployment)
        topo.start(apis=2, workers=workers)
        return deployment

    yield make
    for deployment in made:
        print(deployment.topo.logs())  # shown by pytest only when the test failed
        deployment.topo.close()
        deployment.close()
        assert deployment.topo.leftovers() == []


def _invoices(n: int) -> list[dict[str, Any]]:
    """``n`` job bodies, alternately the HTML and the DOCX example invoice, to PDF."""
    import json

    bodies = []
    for name in ("invoice", "invoice_docx"):
        data = json.loads((EXAMPLES / f"{name}.json").read_text())
        bodies.append({"template": name, "data": data, "format": "pdf"})
    return [bodies[i % 2] for i in range(n)]


def test_every_job_succeeds_exactly_once(
    deploy: Callable[..., Deployment], s3_options: dict[str, Any]
) -> None:
    """JOBS invoices (HTML and DOCX to PDF) submitted round-robin to two APIs, artifacts on S3
    (moto's server): each one runs once, on some worker, leaves one object in the bucket, and
    downloads from either API."""
    d = deploy(s3=s3_options)
    ids = [d.submit(body) for body in _invoices(JOBS)]
    jobs = d.topo.wait_terminal(ids, timeout=60 + 2 * JOBS)
    d.check_succeeded_once(jobs)
    assert sum(d.count("started").values()) == JOBS  # no attempt ran twice, none was fenced out
    workers = set().union(*(d.topo.worker_pids(i) for i in range(len(d.topo.workers))))
    assert {pid for *_, pid in read_events(d.events)} <= workers  # the APIs ran nothing


def test_worker_killed_mid_conversion(deploy: Callable[..., Deployment]) -> None:
    """SIGKILL the worker converting a document: the other worker runs it again once its
    lease ran out, it succeeds once with one artifact, and no LibreOffice of the dead worker
    is left running."""
    d = deploy()
    token = uuid.uuid4().hex
    slow = d.upload(f"SLOW-ME 4 {token}\n")
    others = [d.submit(body) for body in _invoices(6)]
    deadline = time.monotonic() + 60
    while not d.pids("dispatch", token):
        assert time.monotonic() < deadline, "the slow document never reached LibreOffice"
        time.sleep(0.05)
    [victim] = d.pids("dispatch", token)
    index = d.topo.worker_index(victim)
    tree = d.topo.worker_pids(index)
    d.topo.kill_worker(index)

    jobs = d.topo.wait_terminal([slow, *others], timeout=120)
    # Jobs the victim had claimed but not finished ran a second time, elsewhere.
    by_victim = {(name, key) for name, key, _, pid in read_events(d.events) if pid in tree}
    interrupted = {k for name, k in by_victim if name == "started"} - {
        k for name, k in by_victim if name == "succeeded"
    }
    assert slow in interrupted
    # The victim may also have claimed a job and died before its job_started event was
    # written: such a job ran twice too. Any job may take 1 or 2 attempts, never more, and
    # each still succeeds exactly once with one artifact.
    attempts = {k: 2 if k in interrupted else min(2, max(1, jobs[k]["attempts"])) for k in jobs}
    d.check_succeeded_once(jobs, attempts=attempts)
    second = d.pids("dispatch", token)
    assert len(second) == 2 and second[1] not in tree
    tmp = d.topo.root / "tmp" / d.topo.workers[index].name
    deadline = time.monotonic() + 15
    while any(str(tmp) in _cmdline(pid) for pid in d.topo.leftovers()):
        assert time.monotonic() < deadline, "the killed worker's LibreOffice outlived it"
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_job_longer_than_its_lease_runs_once(deploy: Callable[..., Deployment]) -> None:
    """A conversion held 5 s under a 2 s lease: the lease keeper renews it, so the other
    worker never takes the job over."""
    d = deploy(env={"JOB_LEASE_SECONDS": "2"})
    token = uuid.uuid4().hex
    slow = d.upload(f"SLOW-ME 5 {token}\n")
    jobs = d.topo.wait_terminal([slow], timeout=90)
    d.check_succeeded_once(jobs)
    assert len(d.pids("dispatch", token)) == 1
    assert d.count("started")[slow] == 1


def test_crashing_document_fails_without_blocking_others(
    deploy: Callable[..., Deployment],
) -> None:
    """The document that kills LibreOffice each time ends failed after MAX_ATTEMPTS, with
    nothing stored but its upload; the jobs behind it succeed."""
    d = deploy(env={"MAX_ATTEMPTS": "2"})
    bad = d.upload("CRASH-ME\n")
    good = [d.submit(body) for body in _invoices(10)]
    jobs = d.topo.wait_terminal([bad, *good], timeout=180)
    failed = jobs.pop(bad)
    assert failed["status"] == "failed"
    assert failed["attempts"] == 2
    assert failed["error"]["code"] == "conversion_crashed"
    assert d.count("failed")[bad] == 1 and d.count("succeeded")[bad] == 0
    stored = d.store.get(bad)
    assert stored is not None and stored.spec.source is not None and stored.result is None
    assert d.topo.stored_files(f"{stored.tenant}/{bad}") == [stored.spec.source.key]
    d.check_succeeded_once(jobs)


def test_broker_outage(deploy: Callable[..., Deployment], queue: str) -> None:
    """Redis SIGKILLed and started again empty, idle and mid-batch: submits during the outage
    get 503 with Retry-After and leave nothing behind, reads keep working, the workers resume
    on their own and no job is lost or run twice."""
    if queue == "inline":
        pytest.skip("the inline queue has no broker to lose")
    d = deploy()
    redis = d.topo.redis_server
    assert redis is not None
    [body] = _invoices(1)
    before = d.submit(body)
    d.topo.wait_terminal([before], timeout=60)

    # Idle: down, submits refused, reads still served.
    redis.kill()
    for api in range(2):
        refused = d.topo.submit(body, api=api, headers={"Idempotency-Key": f"outage-{api}"})
        assert refused.status_code == 503, refused.text
        assert "Retry-After" in refused.headers
        upload = d.topo.submit(upload=("doc.txt", b"hello\n"), form={"format": "pdf"}, api=api)
        assert upload.status_code == 503, upload.text
        ready = d.topo.client(api).get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["queue"] != "ok"
        assert d.topo.download(before, api=api).status_code == 200
    assert [j["id"] for j in d.topo.client(0).get("/jobs").json()["jobs"]] == [before]
    tenant = d.store.get(before).tenant  # type: ignore[union-attr]
    assert [p.name for p in (d.topo.storage_dir / tenant).iterdir()] == [before]

    redis.restart()
    # The refused submits, retried with their keys, create their jobs now.
    retried = [
        d.submit(body, api=api, headers={"Idempotency-Key": f"outage-{api}"}) for api in range(2)
    ]
    # Mid-batch: kill it while jobs are queued and running, start it again empty.
    batch = [d.submit(b) for b in _invoices(30)]
    deadline = time.monotonic() + 60
    while not set(batch) & set(d.count("succeeded")):
        assert time.monotonic() < deadline, "no job of the batch finished"
        time.sleep(0.05)
    redis.kill()
    time.sleep(1)
    redis.restart()
    jobs = d.topo.wait_terminal([before, *retried, *batch], timeout=180)
    d.check_succeeded_once(jobs)
    assert all(w.alive() for w in d.topo.workers)  # resumed without a restart


def test_private_redis_restarts_empty_on_its_port(tmp_path: Path) -> None:
    """The harness's Redis: answers, dies with SIGKILL, comes back empty on the same port."""
    import redis as redis_client

    server = RedisServer(tmp_path)
    try:
        server.start()
        client = redis_client.Redis.from_url(server.url)
        client.set("kept?", "yes")
        server.kill()
        assert not server.ping()
        port = server.port
        server.restart()
        assert server.port == port
        assert client.get("kept?") is None  # no persistence: a restart loses everything
        client.close()
    finally:
        server.kill()
    assert server.process is not None and not server.process.alive()
