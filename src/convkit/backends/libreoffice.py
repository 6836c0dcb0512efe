"""The built-in converter: one headless ``soffice --convert-to`` process per conversion.

Each conversion runs in its own private work directory with its own user profile (two soffice
processes on one profile fail silently, and a call on a busy profile is handed to whoever holds
it), in its own process group so a timeout can kill ``oosplash`` and ``soffice.bin`` together.
Profiles are pooled: the first run on a fresh profile spends about two extra seconds creating it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from convkit.errors import ConversionError, ConversionTimeout, ServiceUnavailable, ValidationError
from convkit.hookspecs import hookimpl
from convkit.ports import Converter
from convkit.settings import Settings

__all__ = [
    "CONVERSIONS",
    "IMPORT_FILTERS",
    "LibreOfficeConverter",
    "libreoffice_version",
    "register_converters",
]

_WRITER_PDF = "writer_pdf_Export"
_DOCX = "MS Word 2007 XML"
_XLSX = "Calc MS Excel 2007 XML"

#: source format -> {target format -> LibreOffice export filter}.
CONVERSIONS: dict[str, dict[str, str]] = {
    "html": {"pdf": _WRITER_PDF, "docx": _DOCX, "odt": "writer8"},
    "txt": {"pdf": _WRITER_PDF, "docx": _DOCX, "odt": "writer8"},
    "docx": {"pdf": _WRITER_PDF, "odt": "writer8"},
    "odt": {"pdf": _WRITER_PDF, "docx": _DOCX},
    "doc": {"pdf": _WRITER_PDF, "docx": _DOCX, "odt": "writer8"},
    "rtf": {"pdf": _WRITER_PDF, "docx": _DOCX, "odt": "writer8"},
    "xlsx": {"pdf": "calc_pdf_Export", "ods": "calc8"},
    "ods": {"pdf": "calc_pdf_Export", "xlsx": _XLSX},
    "pptx": {"pdf": "impress_pdf_Export"},
    "odp": {"pdf": "impress_pdf_Export"},
}

#: source format -> import filter. Always forced: left to detection, HTML goes through the
#: writer_web route (which drops content on PDF export) and a corrupt .docx is quietly imported
#: as plain text and "converted" into a PDF of garbage.
IMPORT_FILTERS: dict[str, str] = {
    "html": "HTML (StarWriter)",
    "txt": "Text (encoded):UTF8",
    "docx": _DOCX,
    "odt": "writer8",
    "doc": "MS Word 97",
    "rtf": "Rich Text Format",
    "xlsx": _XLSX,
    "ods": "calc8",
    "pptx": "Impress MS PowerPoint 2007 XML",
    "odp": "impress8",
}

_INSTALL_HINT = (
    "LibreOffice is not installed: apt-get install libreoffice-writer-nogui "
    "libreoffice-calc-nogui libreoffice-impress-nogui (or put soffice on PATH)"
)
_TAIL = 2000


def _find_soffice(binary: str | None) -> str:
    for candidate in (binary,) if binary else ("soffice", "libreoffice"):
        found = shutil.which(candidate)
        if found:
            return found
    raise ServiceUnavailable(_INSTALL_HINT)


def _profile_url(path: Path) -> str:
    return f"-env:UserInstallation={path.as_uri()}"


def _remove_all(dirs: list[Path]) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    dirs.clear()


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in the process group ``pgid``, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole group of ``proc`` (it leads it: start_new_session) and reap ``proc``.

    Only called while ``proc`` is unreaped, or after checking the group still has members, so the
    group id is still held by our processes and cannot belong to anyone else.
    """
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL is delivered asynchronously: wait (briefly) until the other members are gone too,
    # so "returned" means "nothing left running".
    deadline = time.monotonic() + 5
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _spawn(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # start_new_session: soffice leads a new process group, so one killpg reaches oosplash and
    # soffice.bin; stdin closed so it can never wait for a terminal.
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, str]:
    """Wait for ``proc``; on timeout kill its group and re-raise TimeoutExpired. Leaves nothing
    of the group running, whatever happens."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        # Drain and close the pipe; bounded, in case something outside the group holds it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise
    finally:
        if proc.returncode is None:  # interrupted some other way: never leave soffice behind
            _kill_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    # oosplash waits for soffice.bin, but a helper it forked could outlive both.
    if _group_members(proc.pid):
        _kill_group(proc)
    return proc.returncode, out.decode("utf-8", "replace")


def libreoffice_version(binary: str | None = None) -> str | None:
    """``soffice --version`` ("LibreOffice 7.4.7.2 ..."), or None if it is missing or fails."""
    try:
        soffice = _find_soffice(binary)
    except ServiceUnavailable:
        return None
    profile = Path(tempfile.mkdtemp(prefix="convkit-lo-version-"))
    try:
        proc = _spawn(
            [soffice, _profile_url(profile), "--headless", "--version"],
            cwd=profile,
            env={**os.environ, "TMPDIR": str(profile)},
        )
        code, out = _wait(proc, 30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.startswith("LibreOffice")]
    return lines[0].strip() if code == 0 and lines else None


class LibreOfficeConverter(Converter):
    """Converts office documents and HTML with headless LibreOffice, one process per call.

    :param timeout_s: per conversion, in seconds (the plugin passes ``OFFICE_TIMEOUT_S``).
    :param binary: the soffice executable; default ``soffice`` (or ``libreoffice``) on PATH.

    Construction spawns nothing and touches no disk; profiles are made on first use and removed
    by :meth:`close` or at interpreter exit.
    """

    name = "libreoffice"

    def __init__(self, *, timeout_s: float = 120.0, binary: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.binary = binary
        self._lock = threading.Lock()
        self._idle: list[Path] = []
        # Every profile dir that exists, idle or in use; shared with the exit-time finalizer.
        self._profiles: list[Path] = []
        self._finalizer = weakref.finalize(self, _remove_all, self._profiles)

    # -- profile pool ----------------------------------------------------------------------------
    def _acquire_profile(self) -> Path:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            profile = Path(tempfile.mkdtemp(prefix="convkit-lo-profile-"))
            self._profiles.append(profile)
            return profile

    def _release_profile(self, profile: Path, *, healthy: bool) -> None:
        with self._lock:
            if healthy and profile in self._profiles:
                self._idle.append(profile)
                return
            # A killed or failed soffice may leave a half-written profile behind: start afresh.
            if profile in self._profiles:
                self._profiles.remove(profile)
        shutil.rmtree(profile, ignore_errors=True)

    def _spawn(self, cmd: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start soffice; a seam for tests that need the process id."""
        return _spawn(cmd, cwd=cwd, env=env)

    # -- Converter -------------------------------------------------------------------------------
    def targets(self, source_format: str) -> frozenset[str]:
        """Formats LibreOffice can produce from ``source_format`` (see :data:`CONVERSIONS`)."""
        return frozenset(CONVERSIONS.get(source_format, {}))

    def check(self) -> None:
        """Readiness: soffice is installed. Cheap; converts nothing."""
        _find_soffice(self.binary)

    def close(self) -> None:
        """Remove the idle profiles; profiles in use are removed when their conversion ends.
        The converter stays usable (new profiles are made on demand)."""
        with self._lock:
            idle, self._idle = self._idle, []
            for profile in idle:
                self._profiles.remove(profile)
        _remove_all(idle)

    def convert(
        self,
        src: Path,
        dst: Path,
        *,
        source_format: str,
        target_format: str,
        options: dict[str, Any] | None = None,
        locale: str | None = None,
    ) -> None:
        """Convert ``src`` into ``dst``.

        :raises ValidationError: the pair is not in :data:`CONVERSIONS`
            (code ``unsupported_conversion``).
        :raises ServiceUnavailable: soffice is not installed.
        :raises ConversionTimeout: it took longer than ``timeout_s``; the process group is killed.
        :raises ConversionError: soffice failed or wrote nothing (message ends with its output).
        """
        export = CONVERSIONS.get(source_format, {}).get(target_format)
        if export is None:
            raise ValidationError(
                f"LibreOffice cannot convert {source_format!r} to {target_format!r}",
                code="unsupported_conversion",
            )
        soffice = _find_soffice(self.binary)
        work = Path(tempfile.mkdtemp(prefix="convkit-lo-"))  # mode 0700
        profile = self._acquire_profile()
        healthy = False
        try:
            # A fixed, safe name: the caller's file name never reaches the command line.
            infile = work / f"input.{source_format}"
            try:
                shutil.copyfile(src, infile)
            except OSError as exc:
                raise ConversionError(f"cannot read the input {src}: {exc.strerror}") from exc
            outdir = work / "out"
            cmd = [
                soffice,
                _profile_url(profile),
                "--headless",
                "--norestore",
                "--nologo",
                "--nodefault",
                "--nolockcheck",
                f"--infilter={IMPORT_FILTERS[source_format]}",
                "--convert-to",
                f"{target_format}:{export}",
                "--outdir",
                str(outdir),
                str(infile),
            ]
            # TMPDIR inside the work dir, so LibreOffice's own temp files go away with it.
            env = {**os.environ, "TMPDIR": str(work)}
            try:
                code, out = _wait(self._spawn(cmd, cwd=work, env=env), self.timeout_s)
            except subprocess.TimeoutExpired:
                raise ConversionTimeout(
                    f"LibreOffice took longer than {self.timeout_s:g}s converting "
                    f"{source_format} to {target_format}"
                ) from None
            except OSError as exc:
                raise ServiceUnavailable(f"cannot start LibreOffice: {exc}") from exc
            result = outdir / f"input.{target_format}"
            if code != 0 or not result.is_file() or result.stat().st_size == 0:
                tail = out.strip()[-_TAIL:] or "(no output)"
                raise ConversionError(
                    f"LibreOffice could not convert {source_format} to {target_format} "
                    f"(exit {code}): {tail}"
                )
            shutil.move(result, dst)
            healthy = True
        finally:
            self._release_profile(profile, healthy=healthy)
            shutil.rmtree(work, ignore_errors=True)


@hookimpl
def register_converters(settings: Settings) -> list[Converter]:
    """Register the built-in LibreOffice converter (spawns nothing until used)."""
    return [LibreOfficeConverter(timeout_s=settings.office_timeout_s)]
