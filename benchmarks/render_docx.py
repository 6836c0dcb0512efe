"""DOCX rendering: convkit's DOCX engine against docxtpl, same template, same data, in-process.

    .venv/bin/python benchmarks/render_docx.py [--rows 1000 10000] [--repeat 5]

The template is ``examples/templates/make_docx_examples.py``'s invoice built with plain Jinja
formatting (docxtpl has no locale filters): a header and footer with the invoice number and a
``{%tr for %}`` line-items table. For each row count it prints

* cold: the first render of a template not seen before (convkit: read + preprocess + compile +
  render + zip; docxtpl: load + render + save), in a fresh engine each time;
* warm: the best and median of ``--repeat`` renders of the same template (convkit's compiled
  template cache is warm; docxtpl has no cache and reloads, as a service would have to);
* peak: peak memory of one cold render: Python allocations (tracemalloc; it does not see
  lxml's C trees or zlib buffers), and the resident-set growth (VmHWM) of a fresh subprocess
  doing one cold render, which sees everything;

and the ratios docxtpl / convkit (above 1 means convkit is faster or smaller).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _examples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_docx_examples", ROOT / "examples" / "templates" / "make_docx_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convkit_renderer(source: bytes) -> Callable[[dict[str, Any]], bytes]:
    from convkit.backends.engines.docx import DocxEngine
    from convkit.ports import Template

    engine = DocxEngine()
    template = Template("invoice", engine="docx", format="docx", source=source)
    return lambda data: engine.render(template, data).content


def docxtpl_render(source: bytes, data: dict[str, Any]) -> bytes:
    from docxtpl import DocxTemplate

    doc = DocxTemplate(io.BytesIO(source))
    doc.render(data, autoescape=True)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_tracemalloc(fn: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_rss(which: str, rows: int) -> int:
    """maxrss (bytes) of a fresh interpreter doing one cold render, minus its baseline."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        f"import benchmarks.render_docx as b; b._child({which!r}, {rows:d})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return int(result["peak"] - result["baseline"])


def _child(which: str, rows: int) -> None:
    module = _examples()
    source = module.build_invoice(locale_filters=False)
    data = module.sample_data(rows)
    # Import everything first, so the baseline holds the libraries and the data.
    import docxtpl  # noqa: F401

    import convkit.backends.engines.docx  # noqa: F401

    gc.collect()
    baseline = _status("VmRSS")
    # ru_maxrss survives exec on Linux (the parent's peak would leak in): reset the kernel's
    # high-water mark instead and read VmHWM.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if which == "convkit":
        convkit_renderer(source)(data)
    else:
        docxtpl_render(source, data)
    peak = _status("VmHWM")
    print(json.dumps({"baseline": baseline, "peak": peak}))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    module = _examples()
    source = module.build_invoice(locale_filters=False)
    print(f"python {sys.version.split()[0]}, template {len(source)} bytes, repeat {args.repeat}")
    for rows in args.rows:
        measure(module, source, rows, args.repeat)


def measure(module: Any, source: bytes, rows: int, repeat: int) -> None:
    mb = 1024 * 1024
    data = module.sample_data(rows)
    # Same text out of both (a sanity check, not a timing).
    ours = convkit_renderer(source)(data)
    theirs = docxtpl_render(source, data)

    cold_c = min(timed(lambda: convkit_renderer(source)(data)) for _ in range(2))
    cold_d = min(timed(lambda: docxtpl_render(source, data)) for _ in range(2))
    render = convkit_renderer(source)
    render(data)  # warm the cache
    warm_c = [timed(lambda: render(data)) for _ in range(repeat)]
    warm_d = [timed(lambda: docxtpl_render(source, data)) for _ in range(repeat)]
    peak_c = peak_tracemalloc(lambda: convkit_renderer(source)(data))
    peak_d = peak_tracemalloc(lambda: docxtpl_render(source, data))
    rss_c = peak_rss("convkit", rows)
    rss_d = peak_rss("docxtpl", rows)

    print(f"\n{rows} line items (output: convkit {len(ours)} B, docxtpl {len(theirs)} B)")
    print(f"{'':24}{'convkit':>12}{'docxtpl':>12}{'ratio':>9}")
    lines = [
        ("cold render (s)", cold_c, cold_d),
        ("warm render, best (s)", min(warm_c), min(warm_d)),
        ("warm render, median (s)", statistics.median(warm_c), statistics.median(warm_d)),
        ("peak tracemalloc (MB)", peak_c / mb, peak_d / mb),
        ("peak RSS growth (MB)", rss_c / mb, rss_d / mb),
    ]
    for label, ck, dt in lines:
        ratio = dt / ck if ck else float("inf")
        print(f"{label:24}{ck:12.3f}{dt:12.3f}{ratio:8.1f}x")
    throughput = statistics.median(warm_d) / statistics.median(warm_c)
    print(f"throughput, repeated renders: {throughput:.1f}x docxtpl's")


if __name__ == "__main__":
    main()
