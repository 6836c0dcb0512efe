"""convkit's own temporary folders, each labelled with the process that made it, and the start-up
sweep that removes those a killed process left behind.

A SIGKILL skips every ``finally``: the folder of a conversion (a tenant's input) or of the
LibreOffice pool stays in the temp folder forever. Each folder therefore holds ``OWNER_FILE``,
the pid and start time of its process; :func:`remove_orphans` removes a folder only when that
process is gone (a pid reused by another process has another start time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OWNER_FILE", "PREFIXES", "make_owned_dir", "owned_tempdir", "remove_orphans"]

log = logging.getLogger("convkit.tempdirs")

#: The label inside each folder: ``{"pid": int, "start": str | null}``.
OWNER_FILE = ".convkit-owner.json"

#: Name prefixes of convkit's folders: a conversion's (pipeline), the LibreOffice pool's, one
#: LibreOffice conversion's, and the one-off ``soffice --version`` profile.
PREFIXES = ("convkit-job-", "convkit-lo-pool-", "convkit-lo-job-", "convkit-lo-version-")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None where
    there is no ``/proc`` (then the pid alone identifies the owner)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so count from its ")".
    return stat[stat.rfind(")") + 2 :].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return start is None or _start_time(pid) in (start, None)


def make_owned_dir(prefix: str) -> Path:
    """A fresh mode-0700 folder ``<TMPDIR>/<prefix>XXXX`` labelled with this process.

    :raises OSError: the folder cannot be created.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    pid = os.getpid()
    try:
        (path / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": _start_time(pid)}))
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


@contextlib.contextmanager
def owned_tempdir(prefix: str) -> Iterator[Path]:
    """:func:`make_owned_dir`, removed on exit whatever happens."""
    path = make_owned_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_orphans(directory: Path | None = None) -> list[Path]:
    """Remove convkit's folders (:data:`PREFIXES`) in ``directory`` (default: the temp folder)
    whose owner process is gone; return them. Folders without a readable label (another user's,
    or one written by a convkit older than the label) are left alone. Never raises."""
    root = Path(directory or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(PREFIXES)]
    except OSError:
        return removed
    for path in candidates:
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
            pid, start = int(owner["pid"]), owner.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid, start):  # a pid reused by a newer process has another start time
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed folders of stopped processes", extra={"count": len(removed)})
    return removed
