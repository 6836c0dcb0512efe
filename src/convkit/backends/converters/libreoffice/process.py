"""One warm LibreOffice: a UNO helper process and the soffice group it started.

The helper (``uno_helper.py``) runs under an interpreter that has ``uno``; it starts soffice in
its own process group with its own profile and answers JSON requests on stdin/stdout. This
module finds that interpreter, starts and stops the pair, and kills it without mercy when it
misbehaves: nothing of it survives :meth:`OfficeProcess.kill`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import attrs

from convkit.errors import ServiceUnavailable

__all__ = [
    "HELPER",
    "OfficeProcess",
    "ProcessDied",
    "ProcessTimeout",
    "UnoPython",
    "find_soffice",
    "find_uno_python",
    "group_members",
    "helper_env",
]

#: The script the UNO interpreter runs.
HELPER = Path(__file__).with_name("uno_helper.py")

SOFFICE_HINT = (
    "LibreOffice is not installed: apt-get install libreoffice-writer-nogui "
    "libreoffice-calc-nogui libreoffice-impress-nogui (or put soffice on PATH)"
)


class ProcessDied(Exception):
    """The helper or its soffice died (or answered that soffice crashed)."""


class ProcessTimeout(Exception):
    """No answer within the time allowed."""


def find_soffice(binary: str | None = None) -> str:
    """Path of the soffice executable; ServiceUnavailable with the install hint if none."""
    for candidate in (binary,) if binary else ("soffice", "libreoffice"):
        found = shutil.which(candidate)
        if found:
            return found
    raise ServiceUnavailable(SOFFICE_HINT)


def helper_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a helper: ours minus what would point another Python at the app's
    packages (a virtualenv's PYTHONPATH would make Debian's python3 import the wrong things)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env.update(extra or {})
    return env


@attrs.frozen
class UnoPython:
    """An interpreter that can ``import uno``, and how it was found (for ``convkit doctor``)."""

    path: str
    how: str
    version: str


_uno_cache: dict[tuple[str | None, str], UnoPython] = {}
_uno_lock = threading.Lock()


def _probe_python(path: str) -> str | None:
    try:
        out = subprocess.run(
            [path, "-c", "import sys, uno; print(sys.version.split()[0])"],
            capture_output=True,
            timeout=30,
            env=helper_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip() or None if out.returncode == 0 else None


def find_uno_python(explicit: str | None = None, soffice: str | None = None) -> UnoPython:
    """Find an interpreter with LibreOffice's UNO bridge, checking each candidate by running
    ``import uno`` in it (never in this process: Debian's ``uno`` belongs to one Python build).

    Candidates, in order: ``explicit``; the Python LibreOffice bundles next to soffice
    (``program/python``, Windows and macOS builds, and TDF's Linux packages); ``/usr/bin/python3``
    (Debian's and Ubuntu's ``python3-uno``); this interpreter.
    """
    soffice_path = soffice or shutil.which("soffice") or ""
    key = (explicit, soffice_path)
    with _uno_lock:
        if key in _uno_cache:
            return _uno_cache[key]
    candidates: list[tuple[str, str]] = []
    if explicit:
        candidates.append((explicit, "configured"))
    if soffice_path:
        program = Path(os.path.realpath(soffice_path)).parent
        for name in ("python", "python.bin", "python.exe"):
            candidates.append((str(program / name), "bundled with LibreOffice"))
    candidates.append(("/usr/bin/python3", "system python3 (python3-uno)"))
    candidates.append((sys.executable, "the application's interpreter"))
    tried = []
    for path, how in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        tried.append(path)
        version = _probe_python(path)
        if version:
            found = UnoPython(path, how, version)
            with _uno_lock:
                _uno_cache[key] = found
            return found
        if how == "configured":
            raise ServiceUnavailable(f"the configured UNO interpreter {path} cannot import uno")
    raise ServiceUnavailable(
        "no Python interpreter with LibreOffice's UNO bridge (import uno) was found "
        f"(tried: {', '.join(tried) or 'none'}): install python3-uno for /usr/bin/python3 "
        "(apt-get install python3-uno), or a LibreOffice that bundles its Python"
    )


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int) -> None:
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class OfficeProcess:
    """A started helper + soffice pair. Not thread-safe: the pool gives it to one caller at a
    time.

    :param directory: private to this process (profile and soffice's TMPDIR); removed by
        :meth:`kill`.
    """

    def __init__(
        self,
        *,
        python: str,
        soffice: str,
        directory: Path,
        start_timeout_s: float,
    ) -> None:
        self.python = python
        self.soffice = soffice
        self.directory = directory
        self.start_timeout_s = start_timeout_s
        self.helper: subprocess.Popen[bytes] | None = None
        #: Process group of oosplash + soffice.bin (its leader's pid).
        self.pgid = 0
        #: The UNO pipe's name; LibreOffice makes its socket /tmp/OSL_PIPE_<uid>_<name>.
        self.pipe = f"convkit-{uuid.uuid4().hex}"
        #: The real office process (soffice.bin), for RSS and for tests that stop or kill it.
        self.soffice_pid = 0
        self.tasks = 0
        self.started_at = 0.0
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._seq = 0
        self._stderr: IO[bytes] | None = None

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the helper and wait (bounded) until soffice answers over UNO.

        :raises ServiceUnavailable: it did not become ready; nothing is left running.
        """
        profile = self.directory / "profile"
        tmp = self.directory / "tmp"
        profile.mkdir(parents=True, mode=0o700)
        tmp.mkdir(mode=0o700)
        cfg = {
            "soffice": self.soffice,
            "profile": str(profile),
            "tmp": str(tmp),
            "pipe": self.pipe,
            "start_timeout": self.start_timeout_s,
            "owner_pid": os.getpid(),
        }
        self._stderr = open(self.directory / "helper.log", "wb")  # noqa: SIM115
        try:
            # Its own session: a timeout kills the helper's group without touching ours. The
            # helper arms its parent-death signal itself (the pool spawns from long-lived
            # threads, since that signal follows the spawning thread).
            self.helper = subprocess.Popen(
                [self.python, str(HELPER), json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=helper_env({"TMPDIR": str(tmp)}),
                cwd=self.directory,
                start_new_session=True,
            )
        except OSError as exc:
            self.kill()
            raise ServiceUnavailable(f"cannot start the UNO helper {self.python}: {exc}") from exc
        self.started_at = time.monotonic()
        threading.Thread(
            target=self._read, args=(self.helper.stdout,), daemon=True, name="convkit-lo-reader"
        ).start()
        try:
            first = self._next(self.start_timeout_s + 10)
        except (ProcessTimeout, ProcessDied) as exc:
            detail = self._log_tail()
            self.kill()
            raise ServiceUnavailable(
                f"LibreOffice did not start within {self.start_timeout_s:g}s ({exc}){detail}"
            ) from None
        if first.get("event") != "ready":
            detail = self._log_tail()
            self.kill()
            raise ServiceUnavailable(
                f"LibreOffice did not start: {first.get('error', first)}{detail}"
            )
        self.pgid = int(first["pgid"])
        self.soffice_pid = int(first["soffice_pid"])

    def _log_tail(self) -> str:
        text = ""
        for name in ("helper.log", "tmp/soffice.log"):
            with contextlib.suppress(OSError):
                text += (self.directory / name).read_text(errors="replace")[-800:]
        return f": {text.strip()}" if text.strip() else ""

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise ProcessTimeout(f"no answer within {timeout:g}s") from None
        if line is None:
            self._lines.put(None)  # later readers see the end too
            raise ProcessDied("the UNO helper exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def alive(self) -> bool:
        """The helper runs and soffice.bin is not dead (a stopped one still counts as alive:
        only a probe tells it is wedged)."""
        if self.helper is None or self.helper.poll() is not None:
            return False
        return _is_live(self.soffice_pid)

    def send(self, request: dict[str, Any]) -> int:
        """Write one request; return its id. ProcessDied if the helper is gone."""
        assert self.helper is not None and self.helper.stdin is not None
        self._seq += 1
        try:
            self.helper.stdin.write((json.dumps({**request, "id": self._seq}) + "\n").encode())
            self.helper.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise ProcessDied(f"the UNO helper is gone: {exc}") from None
        return self._seq

    def receive(self, request_id: int, timeout: float) -> dict[str, Any]:
        """The answer to ``request_id``. ProcessTimeout / ProcessDied as they happen; an answer
        saying soffice crashed is ProcessDied too."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self._next(deadline - time.monotonic())
            if answer.get("id") != request_id:
                continue  # a late answer to an abandoned request
            if answer.get("kind") == "crash":
                raise ProcessDied(str(answer.get("error", "soffice crashed")))
            return answer

    def rss_mb(self) -> float:
        """Resident memory of soffice.bin in MiB (0 if unknown)."""
        try:
            with open(f"/proc/{self.soffice_pid}/status", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return 0.0

    def kill(self) -> None:
        """SIGKILL soffice's group and the helper's, reap the helper, remove the directory.
        Idempotent; returns when nothing of this process runs any more (bounded wait)."""
        helper = self.helper
        if self.pgid and group_members(self.pgid):
            _kill_group(self.pgid)
        if helper is not None:
            if helper.returncode is None:
                _kill_group(helper.pid)  # the helper leads its session: the group is ours
            with contextlib.suppress(subprocess.TimeoutExpired):
                helper.wait(10)
            for stream in (helper.stdin, helper.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        # SIGKILL is asynchronous: wait until the group is really empty.
        deadline = time.monotonic() + 5
        while self.pgid and group_members(self.pgid) and time.monotonic() < deadline:
            _kill_group(self.pgid)
            time.sleep(0.01)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        shutil.rmtree(self.directory, ignore_errors=True)
        # A killed soffice leaves its pipe socket behind, and LibreOffice puts it in /tmp
        # whatever TMPDIR says: thousands of them after a day of recycled processes.
        for folder in {"/tmp", tempfile.gettempdir()}:  # noqa: S108  # LibreOffice's own choice
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, f"OSL_PIPE_{os.getuid()}_{self.pipe}"))


def _is_live(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in {"Z", "X"}
