"""Queue throughput: convkit's queues in a real topology, and a bare Celery task beside them.

Run: ``.venv/bin/python benchmarks/queues.py [--n 10000] [--workers 2] [--sweep-interval 10]
[--sweeper-n N]``.
Needs PostgreSQL (``TEST_DATABASE_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/
test``; each setup runs in a fresh schema, dropped afterwards) and ``redis-server`` on PATH for
the broker setups (a private one on a free port, never the machine's own).

Every setup gets the same ``n`` jobs that need no conversion (an HTML template rendered to HTML),
submitted over HTTP by ``--threads`` client threads, round-robin over the APIs:

- ``inline, in-process``: one ``convkit serve`` with ``WORKER_THREADS=--workers``;
- ``inline, separate workers``: ``serve`` with ``WORKER_THREADS=0`` and ``--workers`` ``convkit
  worker`` processes that find jobs only through their sweepers (``--sweep-interval``; the
  default is the setting's default, 10 s): how separate workers behaved before real brokers.
  It runs about 100 jobs per interval, so ``--sweeper-n`` gives it fewer jobs than ``--n``;
- ``redis`` and ``celery``: two APIs with ``WORKER_THREADS=0`` and ``--workers`` workers; a queue
  no plugin registers yet is skipped, and the output says so;
- ``bare Celery``: a Celery task that does nothing, the same count, ``--workers`` prefork
  processes, ``acks_late``, prefetch 1, no result backend, on its own private Redis. convkit's
  per-job cost is printed as a ratio to it.

Figures per setup: jobs/s (``n`` over first submit -> last finish, from the job rows), p50/p99
of submit -> ``succeeded`` and the median of submit -> ``running`` (the rows' ``created_at``,
``started_at``, ``finished_at``), and the workers' resident memory (their Python processes,
LibreOffice left out) once ready and after the last job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402

from convkit.backends.jobstores.sql.store import create_job_store, jobs_table  # noqa: E402
from convkit.testing.topology import (  # noqa: E402
    Process,
    RedisServer,
    Topology,
    fresh_schema,
    process_rss_mb,
    queue_registered,
)

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STALL_S = 120.0  # give up on a setup when no job finished for this long


@dataclass
class Row:
    setup: str
    jobs_s: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    running_s: float | None = None
    rss: tuple[float, float] | None = None
    note: str = ""


def _office(cmd: str) -> bool:
    return any(part in cmd for part in ("soffice", "oosplash", "uno_helper"))


def _rss(pids: list[int]) -> float:
    return sum(process_rss_mb(pid, exclude=_office) for pid in pids)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait(progress: Callable[[], int], n: int, what: str) -> None:
    """Until ``progress()`` reaches ``n``; raise when it stalls for STALL_S seconds."""
    last, since = -1, time.monotonic()
    while (done := progress()) < n:
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            raise TimeoutError(f"{what}: stalled at {done}/{n}")
        time.sleep(0.1)


def run_convkit(setup: str, queue: str, args: argparse.Namespace, in_process: bool, n: int) -> Row:
    """One convkit topology: submit ``n`` HTML -> HTML jobs, wait, read the rows."""
    with (
        tempfile.TemporaryDirectory(prefix="convkit-bench-") as tmp,
        fresh_schema(args.database_url) as url,
    ):
        templates = Path(tmp) / "templates"
        templates.mkdir()
        (templates / "hello.html").write_text("<p>Hello {{ name }}, job {{ i }}</p>\n")
        topo = Topology(
            Path(tmp) / "run",
            database_url=url,
            templates_dir=templates,
            queue=queue,
            redis=queue != "inline",
            env={"OFFICE_POOL_SIZE": "1", "SWEEP_INTERVAL_SECONDS": str(args.sweep_interval)},
            # A Celery worker logs Celery's "<hostname> ready.", not convkit's "worker started".
            worker_ready="ready." if queue == "celery" else "worker started",
        )
        store = create_job_store(url)
        try:
            if in_process:
                topo.start(apis=1, workers=0, api_env={"WORKER_THREADS": str(args.workers)})
                pids = [topo.apis[0].pid]
            else:
                topo.start(apis=2, workers=args.workers)
                pids = [w.pid for w in topo.workers]
            rss_start = _rss(pids)

            def submit(i: int) -> None:
                body = {"template": "hello", "data": {"name": "bench", "i": i}, "format": "html"}
                response = topo.submit(body)
                if response.status_code != 202:
                    raise RuntimeError(f"submit {i}: {response.status_code} {response.text}")

            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(submit, range(n)))
            c = jobs_table.c
            finished = sa.select(sa.func.count()).where(c.status.in_(("succeeded", "failed")))

            def progress() -> int:
                with store.engine.connect() as conn:
                    return int(conn.execute(finished).scalar_one())

            _wait(progress, n, setup)
            rss_end = _rss(pids)
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(c.status, c.created_at, c.started_at, c.finished_at)
                ).all()
        finally:
            store.close()
            topo.close()
    failed = sum(1 for r in rows if r.status != "succeeded")
    done = [(r.finished_at - r.created_at).total_seconds() for r in rows]
    running = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    span = (max(r.finished_at for r in rows) - min(r.created_at for r in rows)).total_seconds()
    return Row(
        setup,
        jobs_s=len(rows) / span,
        p50_s=_percentile(done, 0.50),
        p99_s=_percentile(done, 0.99),
        running_s=statistics.median(running) if running else None,
        rss=(rss_start, rss_end),
        note=f"{failed} failed" if failed else "",
    )


# The bare Celery worker, run as `python -c`: a task that does nothing, convkit's Celery
# options (acks_late, prefetch 1, no result backend), a line on stdout once it is ready.
_BARE_WORKER = """
import sys
from celery import Celery
from celery.signals import worker_ready

app = Celery("bare", broker=sys.argv[1])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                worker_hijack_root_logger=False)

@app.task(name="bare.noop")
def noop():
    return None

@worker_ready.connect
def ready(**_):
    print("BENCH-READY", flush=True)

app.worker_main(["worker", "--pool", "prefork", "--concurrency", sys.argv[2],
                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle"])
"""


def run_bare_celery(args: argparse.Namespace) -> Row:
    """``args.n`` no-op tasks through Celery on a private Redis; done when the queue and the
    unacknowledged set are both empty."""
    import redis as redis_client
    from celery import Celery

    setup = f"bare Celery no-op task, {args.workers} prefork processes"
    with tempfile.TemporaryDirectory(prefix="convkit-bench-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", tmp)}
        worker = Process(
            "celery",
            [sys.executable, "-c", _BARE_WORKER, server.url, str(args.workers)],
            env,
            Path(tmp) / "logs",
            Path(tmp),
        )
        broker = redis_client.Redis.from_url(server.url)
        producer = Celery("bare", broker=server.url)
        try:
            worker.start()
            worker.wait_log("BENCH-READY", 60)
            rss_start = _rss([worker.pid])
            start = time.perf_counter()
            for _ in range(args.n):
                producer.send_task("bare.noop")
            sent = args.n

            def progress() -> int:
                waiting = int(broker.llen("celery")) + int(broker.hlen("unacked"))  # type: ignore[arg-type]
                return sent - waiting

            _wait(progress, args.n, setup)
            elapsed = time.perf_counter() - start
            rss_end = _rss([worker.pid])
        finally:
            producer.close()
            broker.close()
            worker.kill()
            server.kill()
    return Row(setup, jobs_s=args.n / elapsed, rss=(rss_start, rss_end))


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if unit == "s" and value < 1 else f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="jobs per setup")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (or threads)")
    parser.add_argument("--threads", type=int, default=8, help="client threads submitting")
    parser.add_argument("--sweep-interval", type=float, default=10.0)
    parser.add_argument(
        "--sweeper-n",
        type=int,
        help="jobs for the sweeper-only setup (default: --n); it runs ~100 jobs per interval",
    )
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL") or PG_DEFAULT)
    args = parser.parse_args()

    w = args.workers
    sweeper_n = args.sweeper_n or args.n
    setups: list[tuple[str, str, bool, int]] = [
        (f"inline, in-process ({w} threads in serve)", "inline", True, args.n),
        (
            f"inline, {w} separate workers (sweeper every {args.sweep_interval:g} s"
            + (f", n={sweeper_n})" if sweeper_n != args.n else ")"),
            "inline",
            False,
            sweeper_n,
        ),
        (f"redis (Redis Streams), {w} workers", "redis", False, args.n),
        (f"celery, {w} workers", "celery", False, args.n),
    ]
    rows: list[Row] = []
    for setup, queue, in_process, n in setups:
        if not queue_registered(queue):
            rows.append(Row(setup, note=f"skipped: no plugin registers the {queue!r} queue yet"))
        else:
            print(f"running: {setup} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run_convkit(setup, queue, args, in_process, n))
            except (RuntimeError, TimeoutError) as exc:
                rows.append(Row(setup, note=f"failed: {exc}"))
    try:
        import celery  # noqa: F401
    except ImportError:
        bare = Row("bare Celery no-op task", note="skipped: celery is not installed")
    else:
        print("running: bare Celery ...", file=sys.stderr, flush=True)
        bare = run_bare_celery(args)
    rows.append(bare)

    print(
        f"\n{args.n} jobs per setup (HTML -> HTML, no conversion), PostgreSQL, "
        f"{os.cpu_count()} cores, {args.threads} client threads\n"
    )
    head = [
        "Setup",
        "jobs/s",
        "p50 submit→succeeded",
        "p99",
        "median submit→running",
        "worker RSS start → end",
        "per-job cost vs bare Celery",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        ratio = (
            f"{bare.jobs_s / row.jobs_s:.1f}x"
            if row.jobs_s and bare.jobs_s and row is not bare
            else "-"
        )
        rss = f"{row.rss[0]:.0f} → {row.rss[1]:.0f} MiB" if row.rss else "-"
        cells = [
            row.setup,
            f"{row.jobs_s:.0f}" if row.jobs_s else "-",
            _fmt(row.p50_s),
            _fmt(row.p99_s),
            _fmt(row.running_s),
            rss,
            ratio,
        ]
        print("| " + " | ".join(cells) + " |" + (f"  {row.note}" if row.note else ""))


if __name__ == "__main__":
    main()
