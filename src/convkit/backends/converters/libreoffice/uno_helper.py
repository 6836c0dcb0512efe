"""Drive one headless soffice over UNO on behalf of convkit's LibreOffice pool.

This script runs under an interpreter that can ``import uno`` (Debian's ``/usr/bin/python3`` with
``python3-uno``, or LibreOffice's bundled Python), never inside the application: Debian's ``uno``
module belongs to one Python build, and a LibreOffice crash must not take the application down.
It imports only the standard library and ``uno``; it must not import convkit.

Protocol: ``argv[1]`` is a JSON object (see ``main``). The helper starts soffice with its own
profile, connects, then writes one JSON line ``{"event": "ready", ...}`` (or ``"failed"``) to
stdout and answers one JSON request per stdin line with one JSON line. End of stdin means the owner
is gone: the helper kills its soffice process group and exits, so no LibreOffice outlives the pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Profile settings written before soffice first starts. Why each one:
# - macros: never run, whatever the document asks (level 3 = "very high", plus the kill switch);
# - BlockUntrustedRefererLinks: with a document URL as Referer, LibreOffice refuses to fetch
#   anything a document links to (images, linked sections) from anywhere not explicitly trusted;
# - links: never updated (Writer 0 = never, Calc 1 = never);
# - no auto-recovery, backups or locking: one throwaway profile per process, read-only loads;
# - proxy: a black hole for every protocol, a second wall should a fetch slip past the block.
_XCU_ITEMS = [
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "int", "3"),
    (
        "/org.openoffice.Office.Common/Security/Scripting",
        "DisableMacrosExecution",
        "boolean",
        "true",
    ),
    (
        "/org.openoffice.Office.Common/Security/Scripting",
        "BlockUntrustedRefererLinks",
        "boolean",
        "true",
    ),
    ("/org.openoffice.Office.Common/Security/Scripting", "WarnAlienFormat", "boolean", "false"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "short", "0"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "short", "1"),
    ("/org.openoffice.Office.Recovery/AutoSave", "Enabled", "boolean", "false"),
    ("/org.openoffice.Office.Recovery/RecoveryInfo", "Enabled", "boolean", "false"),
    ("/org.openoffice.Office.Common/Save/Document", "CreateBackup", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "FirstRun", "boolean", "false"),
    ("/org.openoffice.Inet/Settings", "ooInetProxyType", "int", "2"),
    ("/org.openoffice.Inet/Settings", "ooInetHTTPProxyName", "string", "127.0.0.1"),
    ("/org.openoffice.Inet/Settings", "ooInetHTTPProxyPort", "int", "9"),
    ("/org.openoffice.Inet/Settings", "ooInetHTTPSProxyName", "string", "127.0.0.1"),
    ("/org.openoffice.Inet/Settings", "ooInetHTTPSProxyPort", "int", "9"),
    ("/org.openoffice.Inet/Settings", "ooInetFTPProxyName", "string", "127.0.0.1"),
    ("/org.openoffice.Inet/Settings", "ooInetFTPProxyPort", "int", "9"),
    ("/org.openoffice.Inet/Settings", "ooInetNoProxy", "string", ""),
]


def _xcu() -> str:
    items = "\n".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse" oor:type="xs:{typ}">'
        f"<value>{value}</value></prop></item>"
        for path, name, typ, value in _XCU_ITEMS
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"{items}\n</oor:items>\n"
    )


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _prctl_pdeathsig(sig: int) -> None:
    _prctl(PR_SET_PDEATHSIG, sig)


def _reap_orphans(keep: int) -> None:
    """Reap adopted zombies (soffice.bin after oosplash, the gpg processes LibreOffice leaves)."""
    for pid, _ in _children(os.getpid(), zombies=True):
        if pid != keep:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _children(pid: int, *, zombies: bool = False) -> list[tuple[int, str]]:
    """(pid, command name) of the live (or, with ``zombies``, dead) children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if (fields[0] == "Z") == zombies and int(fields[1]) == pid:
            out.append((int(entry), comm))
    return out


class Office:
    """One soffice process group and the UNO connection to it."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.desktop: Any = None
        self.bin_pid = 0
        self._killed = threading.Lock()

    def kill(self) -> None:
        """SIGKILL the soffice group (oosplash, soffice.bin and whatever they forked); reap."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(5)
        deadline = time.monotonic() + 5
        # soffice.bin and its children were adopted by this subreaper: reap them too.
        while time.monotonic() < deadline:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not _children(os.getpid()) and not _children(os.getpid(), zombies=True):
                break
            time.sleep(0.01)

    def start(self) -> dict[str, Any]:
        cfg = self.cfg
        user = os.path.join(cfg["profile"], "user")
        os.makedirs(user, exist_ok=True)
        with open(os.path.join(user, "registrymodifications.xcu"), "w", encoding="utf-8") as fh:
            fh.write(_xcu())
        env = dict(os.environ)
        env["TMPDIR"] = cfg["tmp"]
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        log = open(os.path.join(cfg["tmp"], "soffice.log"), "wb")  # noqa: SIM115
        accept = f"pipe,name={cfg['pipe']};urp;StarOffice.ComponentContext"
        self.proc = subprocess.Popen(
            [
                cfg["soffice"],
                "-env:UserInstallation=file://" + cfg["profile"],
                "--headless",
                "--invisible",
                "--nologo",
                "--norestore",
                "--nodefault",
                "--nolockcheck",
                "--nofirststartwizard",
                "--accept=" + accept,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cfg["tmp"],
            # Its own process group, so one killpg reaches oosplash, soffice.bin and their gpg
            # children; and oosplash dies with this helper should the helper be killed.
            start_new_session=True,
            preexec_fn=lambda: _prctl_pdeathsig(signal.SIGKILL),
        )
        log.close()
        import uno  # only under the UNO interpreter

        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext(
            "com.sun.star.bridge.UnoUrlResolver", local
        )
        deadline = time.monotonic() + float(cfg["start_timeout"])
        ctx = None
        while ctx is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"soffice exited with status {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"soffice not ready after {cfg['start_timeout']}s")
            try:
                ctx = resolver.resolve("uno:" + accept)
            except Exception:  # NoConnectException until soffice listens
                time.sleep(0.05)
        smgr = ctx.ServiceManager
        self.desktop = smgr.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
        for pid, comm in _children(self.proc.pid):
            if comm.startswith("soffice"):
                self.bin_pid = pid
        return {"pgid": self.proc.pid, "soffice_pid": self.bin_pid or self.proc.pid}

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        if self.bin_pid:
            try:
                with open(f"/proc/{self.bin_pid}/stat", encoding="utf-8") as fh:
                    return fh.read().split(")")[-1].split()[0] != "Z"
            except OSError:
                return False
        return True

    def convert(self, req: dict[str, Any]) -> dict[str, Any]:
        import uno
        from com.sun.star.beans import PropertyValue

        def pv(name: str, value: Any) -> Any:
            p = PropertyValue()
            p.Name = name
            p.Value = value
            return p

        src_url = uno.systemPathToFileUrl(req["src"])
        dst_url = uno.systemPathToFileUrl(req["dst"])
        load = [
            pv("Hidden", True),
            # Read-only, except where the job's locale must rewrite Calc's number formats:
            # Calc refuses every API edit to a read-only document. The file is our private copy
            # and is never stored back, so nothing is lost by opening that one for writing.
            pv("ReadOnly", not req.get("writable", False)),
            # com.sun.star.document.UpdateDocMode.NO_UPDATE and MacroExecMode.NEVER_EXECUTE
            pv("UpdateDocMode", 0),
            pv("MacroExecutionMode", 0),
            # The document's own URL as Referer: untrusted, so with BlockUntrustedRefererLinks
            # nothing it links to is fetched. (An empty Referer counts as trusted.)
            *([pv("Referer", req["referer"])] if req.get("referer") is not None else []),
            pv("FilterName", req["import_filter"]),
        ]
        if req.get("import_options"):
            load.append(pv("FilterOptions", req["import_options"]))
        doc = self.desktop.loadComponentFromURL(src_url, "_blank", 0, tuple(load))
        if doc is None:
            return {
                "ok": False,
                "kind": "error",
                "error": "LibreOffice could not load the document",
            }
        try:
            _apply_locale(doc, req.get("locale"), req.get("paper"))
            store = [pv("FilterName", req["export_filter"]), pv("Overwrite", True)]
            data = req.get("filter_data") or {}
            if data:
                store.append(
                    pv(
                        "FilterData",
                        uno.Any(
                            "[]com.sun.star.beans.PropertyValue",
                            tuple(pv(k, v) for k, v in data.items()),
                        ),
                    )
                )
            if req.get("export_options"):
                store.append(pv("FilterOptions", req["export_options"]))
            doc.storeToURL(dst_url, tuple(store))
        finally:
            with contextlib.suppress(Exception):
                doc.close(True)
        return {"ok": True}


def _apply_locale(doc: Any, locale: str | None, paper: str | None) -> None:
    """Give the loaded document the job's locale: its default language (field and number
    formats, hyphenation) and, for sources without their own page setup, the paper size."""
    if locale:
        import uno

        parts = locale.replace("_", "-").split("-")
        loc = uno.createUnoStruct("com.sun.star.lang.Locale")
        loc.Language = parts[0].lower()
        loc.Country = parts[1].upper() if len(parts) > 1 and len(parts[1]) == 2 else ""
        with contextlib.suppress(Exception):
            doc.CharLocale = loc
        if doc.supportsService("com.sun.star.sheet.SpreadsheetDocument"):
            with contextlib.suppress(Exception):
                _localize_number_formats(doc, loc)
        with contextlib.suppress(Exception):
            families = doc.StyleFamilies
            if families.hasByName("ParagraphStyles"):
                for name in ("Standard", "Default Paragraph Style"):
                    styles = families.getByName("ParagraphStyles")
                    if styles.hasByName(name):
                        styles.getByName(name).CharLocale = loc
    if paper:
        width, height = {"a4": (21000, 29700), "letter": (21590, 27940)}[paper]
        with contextlib.suppress(Exception):
            pages = doc.StyleFamilies.getByName("PageStyles")
            for name in pages.getElementNames():
                style = pages.getByName(name)
                if style.IsLandscape:
                    style.Width, style.Height = height, width
                else:
                    style.Width, style.Height = width, height


def _localize_number_formats(doc: Any, loc: Any) -> None:
    """Calc shows numbers and dates with formats bound to a language, by default the process
    one: move every cell range's format to its equivalent in the job's locale (decimal and
    thousands separators, date order). Ranges of one format are few, so this stays cheap."""
    formats = doc.NumberFormats
    cache: dict[int, int] = {}
    for sheet in doc.Sheets:
        ranges = sheet.getCellFormatRanges()
        for i in range(ranges.getCount()):
            cells = ranges.getByIndex(i)
            key = cells.NumberFormat
            if key not in cache:
                try:
                    cache[key] = formats.getFormatForLocale(key, loc)
                except Exception:
                    cache[key] = key
            if cache[key] != key:
                cells.NumberFormat = cache[key]


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    cfg = json.loads(sys.argv[1])
    office = Office(cfg)

    def die(*_: Any) -> None:
        office.kill()
        os._exit(1)

    # The owner may die without closing anything (SIGKILL): the kernel then sends SIGTERM here
    # (parent-death signal), and end of stdin tells the reader thread below. Either way the
    # soffice group goes first.
    signal.signal(signal.SIGTERM, die)
    # Orphans of soffice (soffice.bin when oosplash dies, gpg) become our children, so we can
    # reap them and nothing lingers as a zombie of PID 1.
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl_pdeathsig(signal.SIGTERM)
    if (
        cfg.get("owner_pid") and os.getppid() != cfg["owner_pid"]
    ):  # the owner died before the signal was armed
        return 1
    try:
        info = office.start()
    except Exception as exc:
        office.kill()
        _write({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _write({"event": "ready", **info})

    requests: list[dict[str, Any]] = []
    cond = threading.Condition()

    def reader() -> None:
        for line in sys.stdin:
            with cond:
                requests.append(json.loads(line))
                cond.notify()
        die()  # stdin closed: the owner is gone or wants us gone

    threading.Thread(target=reader, daemon=True).start()
    while True:
        with cond:
            while not requests:
                cond.wait()
            req = requests.pop(0)
        if req.get("op") == "exit":
            office.kill()
            _write({"id": req.get("id"), "ok": True})
            return 0
        _reap_orphans(office.proc.pid if office.proc else 0)
        try:
            answer = office.convert(req)
        except Exception as exc:
            # A dead bridge means a dead office, even if /proc does not show it dead yet.
            text = f"{type(exc).__name__} {getattr(exc, 'Message', '')} {exc}"
            crashed = "DisposedException" in text or "bridge" in text.lower()
            crashed = crashed or not office.alive()
            answer = {
                "ok": False,
                "kind": "crash" if crashed else "error",
                "error": f"{type(exc).__name__}: {getattr(exc, 'Message', '') or exc}",
                "trace": traceback.format_exc()[-2000:],
            }
            if crashed:
                office.kill()
                _write({"id": req.get("id"), **answer})
                return 2
        _write({"id": req.get("id"), **answer})


if __name__ == "__main__":
    sys.exit(main())
