"""The built-in converter: a self-healing pool of warm LibreOffice processes driven over UNO.

- :mod:`.formats`: the one table of supported pairs, filters and options;
- :mod:`.process`: one helper + soffice pair, and discovery of an interpreter with ``uno``;
- :mod:`.pool`: the pool (timeouts, crashes, probes, recycling, events);
- :mod:`.hardening`: checks a document passes before LibreOffice sees it;
- ``uno_helper.py``: the script the UNO interpreter runs (stdlib + ``uno`` only).

Construction spawns nothing: the pool starts on the first conversion (or :meth:`start`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pluggy

from convkit.errors import ConversionError, ServiceUnavailable
from convkit.ports import Converter, DoctorCheck
from convkit.settings import Settings
from convkit.tempdirs import make_owned_dir

from .formats import (
    CONVERSIONS,
    conversion,
    csv_import_options,
    paper_for_locale,
    validate_options,
)
from .hardening import check_document, conversion_dir
from .pool import OfficePool
from .process import find_soffice, find_uno_python

__all__ = [
    "CONVERSIONS",
    "LibreOfficeConverter",
    "doctor_checks",
    "libreoffice_version",
]


def libreoffice_version(binary: str | None = None) -> str | None:
    """``soffice --version`` ("LibreOffice 7.4.7.2 ..."), or None if it is missing or fails."""
    try:
        soffice = find_soffice(binary)
    except ServiceUnavailable:
        return None
    profile = make_owned_dir("convkit-lo-version-")
    try:
        # Its own profile (a shared one would hand the call to a running listener) and its own
        # process group, killed whatever happens.
        proc = subprocess.Popen(
            [soffice, f"-env:UserInstallation={profile.as_uri()}", "--headless", "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=profile,
            env={**os.environ, "TMPDIR": str(profile)},
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.returncode is None or proc.poll() is None:
                _killpg(proc.pid)
                proc.wait()
            else:
                _killpg(proc.pid)  # a helper it forked could outlive it
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    lines = [
        ln for ln in out.decode("utf-8", "replace").splitlines() if ln.startswith("LibreOffice")
    ]
    return lines[0].strip() if proc.returncode == 0 and lines else None


def _killpg(pgid: int) -> None:
    import signal

    from .process import group_members

    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


class LibreOfficeConverter(Converter):
    """Converts office documents, HTML, text and CSV with a pool of warm LibreOffice processes.

    :param timeout_s: longest one conversion may take (``OFFICE_TIMEOUT_SECONDS``); the process is
        then killed and restarted, and the call raises ConversionTimeout.
    :param pool_size: processes (``OFFICE_POOL_SIZE``; 0 = one per CPU core).
    :param max_tasks: conversions before a process is recycled (``OFFICE_MAX_TASKS``).
    :param max_rss_mb: recycle a process above this resident size (``OFFICE_MAX_RSS_MB``, 0 off).
    :param binary: the soffice executable (default ``soffice`` on PATH).
    :param uno_python: interpreter with ``uno`` for the helper (default: discovered, see
        :func:`convkit.backends.converters.libreoffice.process.find_uno_python`).
    :param hook: the plugin hook relay the pool reports its events to.
    :param start_timeout_s: longest a process may take to become ready.
    :param probe_interval_s: idle processes are health-probed this often.

    Construction spawns nothing and touches no disk. :meth:`close` kills the processes and
    removes every directory; the converter stays usable (the next conversion starts a new pool).
    """

    name = "libreoffice"

    def __init__(
        self,
        *,
        timeout_s: float = 60.0,
        pool_size: int = 0,
        max_tasks: int = 200,
        max_rss_mb: float = 1024,
        binary: str | None = None,
        uno_python: str | None = None,
        hook: pluggy.HookRelay | None = None,
        start_timeout_s: float = 60.0,
        probe_interval_s: float = 60.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.pool_size = pool_size or os.cpu_count() or 1
        self.max_tasks = max_tasks
        self.max_rss_mb = max_rss_mb
        self.binary = binary
        self.uno_python = uno_python
        self.hook = hook
        self.start_timeout_s = start_timeout_s
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._closed = False
        self._pool: OfficePool | None = None

    # -- events --------------------------------------------------------------------------------
    def _event(self, name: str, kwargs: dict[str, Any]) -> None:
        if self.hook is None:
            return
        try:
            getattr(self.hook, name)(converter=self.name, **kwargs)
        except Exception:  # a broken plugin never breaks a conversion
            import logging

            logging.getLogger("convkit.libreoffice").exception("plugin hook %s raised", name)

    # -- pool ----------------------------------------------------------------------------------
    @property
    def pool(self) -> OfficePool:
        """The running pool, started (and waited for) on first use."""
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the LibreOffice converter was closed")
            if self._pool is None or self._pool.closed:
                soffice = find_soffice(self.binary)
                python = find_uno_python(self.uno_python, soffice).path
                self._pool = OfficePool(
                    size=self.pool_size,
                    python=python,
                    soffice=soffice,
                    timeout_s=self.timeout_s,
                    max_tasks=self.max_tasks,
                    max_rss_mb=self.max_rss_mb,
                    events=self._event,
                    start_timeout_s=self.start_timeout_s,
                    probe_interval_s=self.probe_interval_s,
                )
            pool = self._pool
        return pool

    def start(self) -> None:
        """Start the pool now and wait until a process is ready (bounded by the start timeout).

        :raises ServiceUnavailable: LibreOffice or a UNO interpreter is missing, or no process
            became ready in time (the message says why).
        """
        self.pool.wait_ready(self.start_timeout_s + 15)

    # -- Converter -----------------------------------------------------------------------------
    def targets(self, source_format: str) -> frozenset[str]:
        """Formats LibreOffice can produce from ``source_format`` (see :data:`CONVERSIONS`)."""
        return frozenset(CONVERSIONS.get(source_format, {}))

    def validate_options(
        self, source_format: str, target_format: str, options: dict[str, Any]
    ) -> None:
        """Check the options this converter owns (see ``docs/formats.md``); ignore the others.

        :raises ValidationError: ``invalid_option`` for a bad value or a PDF option on another
            target; ``unsupported_conversion`` for a pair not in the table.
        """
        validate_options(conversion(source_format, target_format), options)

    def check(self) -> None:
        """Readiness: soffice and a UNO interpreter exist, and a started pool has a process
        that is not failing to start. Converts nothing (the pool probes idle processes itself)."""
        soffice = find_soffice(self.binary)
        find_uno_python(self.uno_python, soffice)
        pool = self._pool
        if pool is not None and not pool.closed:
            errors = [s.error for s in pool.slots if s.state == "failed"]
            if errors and len(errors) == len(pool.slots):
                raise ServiceUnavailable(f"LibreOffice cannot start: {errors[0]}")

    def close(self) -> None:
        """Kill every LibreOffice process and remove the pool's directories; the next
        conversion starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def shutdown(self) -> None:
        """:meth:`close`, for good: a late caller (a job still running when its ConvKit closed,
        a warm-up thread) gets ServiceUnavailable instead of starting processes nothing would
        ever stop. ``ConvKit.close`` calls this."""
        with self._lock:
            self._closed = True
        self.close()

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
        """Convert ``src`` into ``dst`` on a warm process.

        :raises ValidationError: the pair is not supported (``unsupported_conversion``) or an
            option is bad (``invalid_option``).
        :raises UnsafeDocument: a zip bomb or flat XML with a DOCTYPE; LibreOffice never saw it.
        :raises ConversionTimeout: longer than ``timeout_s`` (the process was restarted).
        :raises ConversionCrashed: LibreOffice died on this document on the retry too.
        :raises ConversionError: LibreOffice could not load or export it.
        :raises ServiceUnavailable: LibreOffice or a UNO interpreter is missing, or cannot start.
        """
        conv = conversion(source_format, target_format)
        data = validate_options(conv, options)
        pool = self.pool
        with conversion_dir() as work:
            # A fixed, safe name: the caller's file name never reaches LibreOffice.
            infile = work / f"input.{source_format}"
            outfile = work / f"output.{target_format}"
            try:
                shutil.copyfile(src, infile)
            except OSError as exc:
                raise ConversionError(f"cannot read the input {src}: {exc.strerror}") from exc
            check_document(infile, conv.source)
            source = conv.source
            import_options = source.import_options
            if source.format == "csv":
                import_options = csv_import_options(locale)
            request: dict[str, Any] = {
                "src": str(infile),
                "dst": str(outfile),
                "import_filter": source.import_filter,
                "import_options": import_options,
                "export_filter": conv.export_filter,
                "export_options": conv.export_options,
                "filter_data": data,
                "locale": locale,
                "paper": paper_for_locale(locale) if source.paper_from_locale else None,
                # Calc refuses API edits of read-only documents; the locale rewrites formats.
                "writable": bool(locale) and source.app == "calc",
            }
            pool.convert(request, source_format=source_format, target_format=target_format)
            if not outfile.is_file() or outfile.stat().st_size == 0:
                raise ConversionError(
                    f"LibreOffice wrote no output converting {source_format} to {target_format}"
                )
            try:
                shutil.move(outfile, dst)
            except OSError as exc:
                raise ConversionError(f"cannot write the output {dst}: {exc.strerror}") from exc


def _font_families() -> str:
    if not shutil.which("fc-list"):
        return "fc-list not found (install fontconfig)"
    try:
        out = subprocess.run(
            ["fc-list", ":", "family"], capture_output=True, timeout=30, check=False
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"fc-list failed: {exc}"
    families = sorted({f.split(",")[0].strip() for f in out.splitlines() if f.strip()})
    return ", ".join(families) if families else "none"


def doctor_checks(settings: Settings) -> list[DoctorCheck]:
    """Checks for ``convkit doctor`` (none is a readiness check: ``/ready`` asks the converter's
    cheap :meth:`LibreOfficeConverter.check` instead): the LibreOffice version, the UNO helper's
    interpreter and how it was found, font families, and the pool's health after starting one
    process and converting one probe document."""

    def version() -> str:
        found = libreoffice_version()
        if not found:
            raise ServiceUnavailable("not found (install libreoffice-writer-nogui)")
        return found

    def uno() -> str:
        found = find_uno_python(None, find_soffice(None))
        return f"{found.path} (Python {found.version}, {found.how})"

    def pool() -> str:
        find_uno_python(None, find_soffice(None))
        converter = LibreOfficeConverter(
            timeout_s=settings.office_timeout_seconds,
            pool_size=1,
            max_tasks=settings.office_max_tasks,
            max_rss_mb=settings.office_max_rss_mb,
        )
        try:
            converter.start()
            started = converter.pool
            failed = started.probe_idle()
            [info] = started.process_info()
            if failed:
                raise ServiceUnavailable("probe failed")
            return (
                f"ok: 1 of {converter_size(settings)} process(es) started for the check, "
                f"soffice pid {info['soffice_pid']}, {info['rss_mb']} MiB"
            )
        finally:
            converter.close()

    return [
        DoctorCheck("LibreOffice", version),
        DoctorCheck("UNO interpreter", uno),
        DoctorCheck("Fonts", _font_families),
        DoctorCheck("Pool", pool),
    ]


def converter_size(settings: Settings) -> int:
    """The pool size ``settings`` ask for (``OFFICE_POOL_SIZE``, 0 = CPU count)."""
    return settings.office_pool_size or os.cpu_count() or 1
