"""A real multi-process deployment for tests and benchmarks: API replicas, workers, a private Redis.

:class:`Topology` starts ``convkit serve`` and ``convkit worker`` as subprocesses of the running
interpreter, all sharing one job database, one storage folder and one templates folder, and
gives a test what it needs to drive them over real HTTP::

    with Topology(tmp_path, database_url=pg_url, queue="inline", templates_dir=templates) as topo:
        topo.start(apis=2, workers=2)
        ids = [topo.submit({"template": "invoice", "data": {}, "format": "pdf"}).json()["id"]
               for _ in range(10)]
        jobs = topo.wait_terminal(ids, timeout=120)
        assert topo.download(ids[0], api=1).content.startswith(b"%PDF")

Every process runs in its own process group and is killed (``SIGKILL``, by process group) when
the topology closes, together with any LibreOffice process left under the topology's folder.
Each process writes stdout and stderr to ``<root>/logs/<name>.out|.err``; :meth:`Topology.logs`
returns their tails for a failure report. Nothing is written outside ``root``: every process gets
``TMPDIR=<root>/tmp/<name>``.

The broker, when a test needs one, is a private ``redis-server`` on a free port without
persistence (:class:`RedisServer`): a test may kill it and start it again empty. The machine's
own Redis and PostgreSQL are never touched.

Needs ``httpx`` (``pip install 'convkit[test]'``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import httpx

import convkit
from convkit.http import API_PREFIX

__all__ = [
    "TERMINAL",
    "Process",
    "RedisServer",
    "Topology",
    "free_port",
    "fresh_schema",
    "process_rss_mb",
    "queue_registered",
]

#: Job statuses after which nothing changes.
TERMINAL = frozenset({"succeeded", "failed"})

#: Variables passed through from the parent's environment; everything else a process sees is
#: given explicitly, so a developer's own DATABASE_URL or OFFICE_POOL_SIZE cannot leak in.
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CI")

_SRC = str(Path(convkit.__file__).resolve().parent.parent)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A PostgreSQL URL whose connections live in a new, empty schema (``search_path``), so a
    test or benchmark shares the server without seeing anyone's rows; the schema is dropped
    with everything in it on exit. ``postgresql://`` means psycopg 3."""
    import sqlalchemy as sa

    base = sa.make_url(url)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    schema = f"convkit_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            # A connection option: the store and Alembic both see only this schema.
            yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False
            )
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def queue_registered(name: str) -> bool:
    """Whether a plugin registers the queue backend ``name`` (``BackendSpec`` only, nothing
    imported), so a test can skip a backend that is not there yet."""
    from convkit.plugins import get_plugin_manager
    from convkit.registry import Registry

    pm = get_plugin_manager()
    return name in Registry.from_hook_results("queue", pm.hook.register_queues()).names()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent = int(stat[stat.rfind(")") + 2 :].split()[1])
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_rss_mb(pid: int, *, exclude: Callable[[str], bool] = lambda cmd: False) -> float:
    """Resident memory of ``pid`` and its descendants, in MiB; a process whose command line
    matches ``exclude`` is left out, with its own descendants (0.0 once ``pid`` is gone)."""
    total = 0.0
    skipped: set[int] = set()
    for p in [pid, *_descendants(pid)]:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        if exclude(cmd):
            skipped.update([p, *_descendants(p)])
        if p in skipped:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


@attrs.define
class Process:
    """One subprocess in its own process group, its output in two files under ``logs``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def err(self) -> Path:
        return self.logs / f"{self.name}.err"

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> None:
        """Start (or start again after :meth:`kill`); output files are appended to."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own group: one killpg reaches its children
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL, *, wait_s: float = 30.0) -> None:
        """Send ``sig`` to the whole process group and wait for the process (SIGKILL: at once;
        another signal: up to ``wait_s``, then SIGKILL)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(30)
        # Children that left the group (none should) still die with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Block until ``text`` appears in stdout or stderr.

        :raises RuntimeError: the process exited or ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            if any(text in p.read_text(errors="replace") for p in (self.out, self.err)):
                return
            if not self.alive() or time.monotonic() > deadline:
                state = "exited" if not self.alive() else f"still silent after {timeout:g}s"
                raise RuntimeError(f"{self.name} {state} before logging {text!r}")
            time.sleep(0.1)

    def tail(self, lines: int = 60) -> str:
        parts = []
        for path in (self.out, self.err):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"----- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts)


@attrs.define
class RedisServer:
    """A private ``redis-server`` on a free port of 127.0.0.1, without persistence, so a
    restart starts it empty. :meth:`restart` keeps the port (clients reconnect to the same URL)."""

    root: Path
    binary: str = "redis-server"
    port: int = attrs.field(factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers PING.

        :raises RuntimeError: no ``redis-server`` binary, or it did not answer in time.
        """
        binary = shutil.which(self.binary)
        if binary is None:
            raise RuntimeError(
                f"{self.binary} is not on PATH (Debian: apt-get install redis-server)"
            )
        work = self.root / "redis"
        work.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ]
        self.process = Process(
            "redis", argv, {"PATH": os.environ.get("PATH", "")}, self.root / "logs", work
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.process.alive() or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"redis-server did not start:\n{self.process.tail()}")
            time.sleep(0.05)

    def ping(self) -> bool:
        """True if the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL it (its data is gone: there is no persistence)."""
        if self.process is not None:
            self.process.kill()

    def restart(self) -> None:
        """Kill it if running and start it again, empty, on the same port."""
        self.kill()
        self.start()


@attrs.define
class Topology:
    """API replicas and workers over one database, one storage folder and one templates folder.

    :param root: a folder this topology owns (pytest's ``tmp_path``); everything goes below it.
    :param database_url: the shared ``DATABASE_URL`` (PostgreSQL: SQLite is one machine only).
    :param queue: ``CONVKIT_QUEUE`` of every process.
    :param templates_dir: ``TEMPLATES_DIR`` of every process.
    :param env: more variables for every process (``JOB_LEASE_SECONDS``, ``CONVKIT_PLUGINS``...).
    :param redis: start a private :class:`RedisServer` first and pass its URL as ``REDIS_URL``.
    :param pythonpath: folders put on ``PYTHONPATH`` after convkit's own (plugin modules).
    :param worker_ready: what a worker logs once it consumes (None: do not wait for it).
    :param storage_url: a shared ``STORAGE_URL`` other than the local folder (``s3://...``),
        with ``storage_options`` as its ``STORAGE_OPTIONS``.
    """

    root: Path
    database_url: str
    templates_dir: Path
    queue: str = "inline"
    env: Mapping[str, str] = attrs.field(factory=dict)
    redis: bool = False
    pythonpath: Iterable[str] = ()
    api_key: str = "topology-key"
    worker_ready: str | None = "worker started"
    storage_url: str | None = None
    storage_options: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    #: The private Redis, once :meth:`start` started it.
    redis_server: RedisServer | None = attrs.field(default=None, init=False)
    apis: list[Process] = attrs.field(factory=list, init=False)
    workers: list[Process] = attrs.field(factory=list, init=False)
    ports: dict[str, int] = attrs.field(factory=dict, init=False)
    _clients: dict[str, httpx.Client] = attrs.field(factory=dict, init=False)
    _round_robin: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    # -- life ----------------------------------------------------------------------------------
    @property
    def storage_dir(self) -> Path:
        """The shared ``STORAGE_URL`` folder."""
        return self.root / "storage"

    def base_env(self, name: str) -> dict[str, str]:
        """The environment of the process ``name``: the shared settings, then :attr:`env`."""
        tmp = self.root / "tmp" / name
        tmp.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
        env |= {
            "PYTHONPATH": os.pathsep.join([_SRC, *self.pythonpath]),
            "TMPDIR": str(tmp),
            "DATABASE_URL": self.database_url,
            "STORAGE_URL": self.storage_url or str(self.storage_dir),
            "TEMPLATES_DIR": str(self.templates_dir),
            "API_KEY": self.api_key,
            "CONVKIT_QUEUE": self.queue,
        }
        if self.storage_options is not None:
            env["STORAGE_OPTIONS"] = json.dumps(dict(self.storage_options))
        if self.redis_server is not None:
            env["REDIS_URL"] = self.redis_server.url
        return env | dict(self.env)

    def _convkit(self, name: str, args: list[str], env: Mapping[str, str] | None) -> Process:
        argv = [sys.executable, "-m", "convkit.cli", *args]
        return Process(
            name, argv, self.base_env(name) | dict(env or {}), self.root / "logs", self.root
        )

    def start(
        self,
        *,
        apis: int = 2,
        workers: int = 2,
        api_env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
        timeout: float = 90.0,
    ) -> None:
        """Start the private Redis (if asked), migrate the database once, then ``apis`` APIs
        (``WORKER_THREADS=0`` unless ``api_env`` says otherwise) and ``workers`` workers, and
        wait until every API answers ``/health`` and every worker logged :attr:`worker_ready`.

        :raises RuntimeError: a process exited or was not ready within ``timeout`` seconds.
        """
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.redis and self.redis_server is None:
            self.redis_server = RedisServer(self.root)
            self.redis_server.start()
        # Once, before any replica: two processes migrating an empty database at once race.
        migrate = self._convkit("migrate", ["migrate"], None)
        migrate.start()
        assert migrate.popen is not None
        if migrate.popen.wait(timeout) != 0:
            raise RuntimeError(f"convkit migrate failed:\n{migrate.tail()}")
        for _ in range(apis):
            self.add_api(api_env, wait=False)
        for _ in range(workers):
            self.add_worker(worker_env, wait=False)
        for proc in self.apis:
            self._wait_healthy(proc, timeout)
        for proc in self.workers:
            self._wait_worker(proc, timeout)

    def add_api(self, env: Mapping[str, str] | None = None, *, wait: bool = True) -> Process:
        """Start one more ``convkit serve --framework fastapi`` on a free port."""
        name = f"api-{len(self.apis)}"
        port = free_port()
        args = ["serve", "--framework", "fastapi", "--port", str(port)]
        proc = self._convkit(name, args, {"WORKER_THREADS": "0", **(env or {})})
        self.ports[name] = port
        proc.start()
        self.apis.append(proc)
        if wait:
            self._wait_healthy(proc)
        return proc

    def add_worker(self, env: Mapping[str, str] | None = None, *, wait: bool = True) -> Process:
        """Start one more ``convkit worker``."""
        proc = self._convkit(f"worker-{len(self.workers)}", ["worker"], env)
        proc.start()
        self.workers.append(proc)
        if wait:
            self._wait_worker(proc)
        return proc

    def _wait_worker(self, proc: Process, timeout: float = 90.0) -> None:
        if self.worker_ready is not None:
            proc.wait_log(self.worker_ready, timeout)

    def _wait_healthy(self, proc: Process, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client(self.apis.index(proc)).get("/health").status_code == 200:
                    return
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not become healthy:\n{proc.tail()}")
            time.sleep(0.1)

    def close(self) -> None:
        """Kill every process (SIGKILL, by process group), then any LibreOffice process still
        running from this topology's folder; close the HTTP clients."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for proc in [*self.workers, *self.apis]:
            proc.kill()
        if self.redis_server is not None:
            self.redis_server.kill()
        self._kill_strays()

    def leftovers(self) -> list[int]:
        """Pids of live processes whose command line names this topology's folder (none
        should be left after :meth:`close`)."""
        me, found = os.getpid(), []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            with contextlib.suppress(OSError, IndexError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = Path(f"/proc/{entry}/stat").read_text()
                if str(self.root) in cmd and stat[stat.rfind(")") + 2] not in "ZX":
                    found.append(int(entry))
        return found

    def _kill_strays(self) -> None:
        # A LibreOffice helper is in a session of its own and dies when its owner's pipe
        # closes; a worker killed mid-start could leave one behind, so look by folder too.
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------
    def kill_worker(self, index: int) -> int:
        """SIGKILL worker ``index`` (its whole process group); return its pid."""
        proc = self.workers[index]
        pid = proc.pid
        proc.kill()
        return pid

    def worker_pids(self, index: int) -> set[int]:
        """Worker ``index``'s process and its live descendants (a Celery worker runs jobs in
        child processes)."""
        pid = self.workers[index].pid
        return {pid, *_descendants(pid)}

    def worker_index(self, pid: int) -> int:
        """The index of the worker whose process tree holds ``pid``.

        :raises LookupError: no worker's does.
        """
        for i in range(len(self.workers)):
            if pid in self.worker_pids(i):
                return i
        raise LookupError(f"pid {pid} belongs to no worker of this topology")

    def logs(self, lines: int = 60) -> str:
        """The last ``lines`` lines of every process's stdout and stderr."""
        procs = [*self.apis, *self.workers]
        if self.redis_server is not None and self.redis_server.process is not None:
            procs.append(self.redis_server.process)
        return "\n".join(
            f"===== {p.name} (pid {p.popen and p.popen.pid})\n{p.tail(lines)}" for p in procs
        )

    # -- HTTP ----------------------------------------------------------------------------------
    def client(self, api: int) -> httpx.Client:
        """An HTTP client on API ``api`` (base URL ``http://127.0.0.1:<port>/api/v1``)."""
        name = self.apis[api].name
        if name not in self._clients:
            self._clients[name] = httpx.Client(
                base_url=f"http://127.0.0.1:{self.ports[name]}{API_PREFIX}",
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=30.0,
            )
        return self._clients[name]

    def next_api(self) -> int:
        """The next API in round-robin order."""
        return next(self._round_robin) % len(self.apis)

    def submit(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        upload: tuple[str, bytes] | None = None,
        form: Mapping[str, str] | None = None,
        api: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """``POST /jobs`` to API ``api`` (default: round-robin): a JSON ``body``, or an
        ``upload`` of ``(filename, bytes)`` with ``form`` fields (``format`` ...). The response
        is returned whatever its status."""
        client = self.client(self.next_api() if api is None else api)
        if upload is not None:
            return client.post(
                "/jobs", files={"file": upload}, data=dict(form or {}), headers=dict(headers or {})
            )
        return client.post("/jobs", json=dict(body or {}), headers=dict(headers or {}))

    def job(self, job_id: str, *, api: int | None = None) -> dict[str, Any]:
        """``GET /jobs/{id}``'s JSON (raises for any status but 200)."""
        response = self.client(self.next_api() if api is None else api).get(f"/jobs/{job_id}")
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job

    def wait_terminal(
        self, job_ids: Iterable[str], *, timeout: float = 300.0, poll_s: float = 0.2
    ) -> dict[str, dict[str, Any]]:
        """Poll (round-robin) until every job is ``succeeded`` or ``failed``; return the jobs.

        :raises TimeoutError: naming how many jobs were still pending, and their statuses.
        """
        pending = list(dict.fromkeys(job_ids))
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for job_id in pending:
                job = self.job(job_id)
                if job["status"] in TERMINAL:
                    done[job_id] = job
                else:
                    still.append(job)
            pending = [job["id"] for job in still]
            if pending and time.monotonic() > deadline:
                statuses = sorted({job["status"] for job in still})
                raise TimeoutError(
                    f"{len(pending)} job(s) not finished after {timeout:g}s (statuses: {statuses})"
                )
            if pending:
                time.sleep(poll_s)
        return done

    def wait_status(
        self, job_id: str, statuses: Iterable[str], *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Poll until the job's status is one of ``statuses``; return the job.

        :raises TimeoutError: it was not within ``timeout`` seconds.
        """
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in wanted:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {job['status']}, not in {sorted(wanted)}")
            time.sleep(0.05)

    def download(self, job_id: str, *, api: int) -> httpx.Response:
        """``GET /jobs/{id}/result`` from API ``api`` (the whole body read)."""
        return self.client(api).get(f"/jobs/{job_id}/result")

    def stored_files(self, prefix: str) -> list[str]:
        """Storage keys under ``prefix`` (``<tenant>/<job-id>``), sorted."""
        if self.storage_url is not None:
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.storage_url, **(self.storage_options or {}))
            fs.invalidate_cache()
            found = fs.find(f"{root.rstrip('/')}/{prefix}")
            return sorted(path[len(root.rstrip("/")) + 1 :] for path in found)
        base = self.storage_dir / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.storage_dir)) for p in base.rglob("*") if p.is_file())
