"""Conversion throughput: the convkit pool against what a user would use instead.

Run: ``.venv/bin/python benchmarks/convert.py [--n 40] [--unoserver]``. Prints, for a one-page
DOCX, a 20-page DOCX with tables and a 2,000-row XLSX (all generated):

- pool (default size) vs cold ``soffice --convert-to`` with the same parallelism (goal >= 10x);
- pool vs unoserver (installed in a throwaway venv made with ``/usr/bin/python3 -m venv
  --system-site-packages``, driven by its own client; goal >= 3x; XLSX crash or not);
- pool vs raw UNO in warm processes (the helper's load/store/close without the pool; goal
  overhead < 10 %).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.fixtures.office import docx, xlsx  # noqa: E402

from convkit.backends.converters.libreoffice import LibreOfficeConverter  # noqa: E402
from convkit.backends.converters.libreoffice.process import (  # noqa: E402
    OfficeProcess,
    find_soffice,
    find_uno_python,
)


def documents(tmp: Path) -> dict[str, Path]:
    one = tmp / "one.docx"
    one.write_bytes(docx(["A one-page letter.", "Second paragraph.", "Regards."]))
    twenty = tmp / "twenty.docx"
    twenty.write_bytes(
        docx([f"Section {i}" for i in range(40)], tables=40, table_rows=14, page_breaks=False)
    )
    sheet = tmp / "rows.xlsx"
    sheet.write_bytes(
        xlsx(
            [["id", "name", "qty", "price"]]
            + [[i, f"item {i}", i % 17, round(i * 1.25, 2)] for i in range(2000)]
        )
    )
    return {"docx-1p": one, "docx-20p": twenty, "xlsx-2000": sheet}


def rate(fn, jobs: list[int], workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(fn, jobs))
    return len(jobs) / (time.perf_counter() - start)


def bench_pool(conv: LibreOfficeConverter, src: Path, n: int, workers: int, tmp: Path) -> float:
    fmt = src.suffix[1:]
    return rate(
        lambda i: conv.convert(src, tmp / f"pool-{i}.pdf", source_format=fmt, target_format="pdf"),
        list(range(n)),
        workers,
    )


def bench_cold(src: Path, n: int, workers: int, tmp: Path) -> float:
    soffice = find_soffice()

    def one(i: int) -> None:
        d = Path(tempfile.mkdtemp(dir=tmp))
        subprocess.run(
            [
                soffice,
                f"-env:UserInstallation={(d / 'p').as_uri()}",
                "--headless",
                "--convert-to",
                "pdf",
                "--outdir",
                str(d),
                str(src),
            ],
            capture_output=True,
            timeout=120,
            check=False,
            start_new_session=True,
        )
        shutil.rmtree(d, ignore_errors=True)

    return rate(one, list(range(n)), workers)


def bench_raw(src: Path, n: int, workers: int, tmp: Path) -> float:
    """The helper's UNO calls on warm processes, one per worker, no pool in between."""
    from convkit.backends.converters.libreoffice.formats import CONVERSIONS

    conv = CONVERSIONS[src.suffix[1:]]["pdf"]
    procs = []
    for w in range(workers):
        p = OfficeProcess(
            python=find_uno_python().path,
            soffice=find_soffice(),
            directory=tmp / f"raw{w}",
            start_timeout_s=60,
        )
        p.start()
        procs.append(p)
    req = {
        "src": str(src),
        "import_filter": conv.source.import_filter,
        "export_filter": conv.export_filter,
    }
    for w, p in enumerate(procs):  # warm up
        p.receive(p.send({**req, "dst": str(tmp / f"raw-w{w}.pdf")}), 120)
    try:

        def worker(w: int) -> None:
            for i in range(n // workers):
                procs[w].receive(procs[w].send({**req, "dst": str(tmp / f"raw-{w}-{i}.pdf")}), 120)

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(worker, range(workers)))
        return (n // workers * workers) / (time.perf_counter() - start)
    finally:
        for p in procs:
            p.kill()


def _unoconvert(venv: Path, src: Path, dst: Path) -> int:
    return subprocess.run(
        [str(venv / "bin/unoconvert"), "--port", "2003", str(src), str(dst)],
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


def bench_unoserver(docs: dict[str, Path], n: int, workers: int, tmp: Path) -> dict[str, str]:
    venv = tmp / "unoserver-venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True
    )
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "unoserver"], check=True)
    server = subprocess.Popen(
        [
            str(venv / "bin/unoserver"),
            "--port",
            "2003",
            "--uno-port",
            "2002",
            # unoserver 3 takes a directory path here (2.x took a file:// URI).
            f"--user-installation={tmp / 'unoprofile'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while True:  # ready when its XML-RPC port answers
            if server.poll() is not None:
                raise RuntimeError("unoserver exited during start-up")
            try:
                socket.create_connection(("127.0.0.1", 2003), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("unoserver did not start within 60 s") from None
                time.sleep(0.2)
        for name, src in docs.items():

            def one(i: int, src: Path = src, name: str = name) -> int:
                if server.poll() is not None:
                    return -1  # unoserver died (it does on XLSX here): count as failed
                try:
                    return _unoconvert(venv, src, tmp / f"uno-{name}-{i}.pdf")
                except subprocess.TimeoutExpired:
                    return -2

            t = time.perf_counter()
            with ThreadPoolExecutor(workers) as ex:
                codes = list(ex.map(one, range(n)))
            ok = codes.count(0)
            alive = "" if server.poll() is None else ", unoserver crashed"
            out[name] = f"{n / (time.perf_counter() - t):.1f}/s ({ok}/{n} ok{alive})"
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have crashed already
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--unoserver", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="convkit-bench-"))
    try:
        docs = documents(tmp)
        conv = LibreOfficeConverter()
        conv.start()
        workers = conv.pool_size
        for src in docs.values():  # warm every process on every kind
            bench_pool(conv, src, workers * 2, workers, tmp)
        print(f"pool size {workers}, n={args.n} per document")
        pool = {k: bench_pool(conv, v, args.n, workers, tmp) for k, v in docs.items()}
        conv.close()
        raw = {k: bench_raw(v, args.n, workers, tmp) for k, v in docs.items()}
        cold = bench_cold(docs["docx-1p"], max(workers * 3, 6), workers, tmp)
        for k in docs:
            overhead = (raw[k] / pool[k] - 1) * 100
            print(
                f"{k:10s} pool {pool[k]:6.1f}/s  raw UNO {raw[k]:6.1f}/s  "
                f"overhead {overhead:+.1f} %"
            )
        print(
            f"docx-1p    cold soffice --convert-to {cold:.2f}/s  -> pool is "
            f"{pool['docx-1p'] / cold:.1f}x"
        )
        if args.unoserver:
            for k, v in bench_unoserver(docs, args.n, workers, tmp).items():
                print(f"{k:10s} unoserver {v}  (pool {pool[k]:.1f}/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
