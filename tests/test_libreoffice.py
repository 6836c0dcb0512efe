"""The LibreOffice converter against a real soffice: formats, options, locale, events.

One warm pool (two processes) serves the whole module; healing and hardening have their own
modules (test_libreoffice_healing.py, test_libreoffice_hardening.py).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader

import convkit
from convkit import Settings, get_plugin_manager
from convkit.backends.converters.libreoffice import (
    CONVERSIONS,
    LibreOfficeConverter,
    libreoffice_version,
)
from convkit.backends.converters.libreoffice.formats import (
    SOURCES,
    csv_import_options,
    paper_for_locale,
)
from convkit.errors import ServiceUnavailable, ValidationError
from convkit.testing.converter import ConverterContract
from tests.fixtures.office import docx, fodt, odp, xlsx
from tests.fixtures.office.support import Recorder, leftover_soffice, require_soffice

pytestmark = pytest.mark.libreoffice

TABLE_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<h1>Grüße aus Köln - Ωmega</h1>
<table border="1"><tr><th>Item</th><th>Price</th></tr>
<tr><td>Crème brûlée</td><td>7.50</td></tr><tr><td>Smørrebrød</td><td>12.00</td></tr></table>
</body></html>"""


def pdf_text(path: Path | bytes) -> str:
    data = path if isinstance(path, bytes) else path.read_bytes()
    assert data.startswith(b"%PDF")
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


@pytest.fixture(scope="module", autouse=True)
def _no_soffice_left() -> Iterator[None]:
    yield
    assert leftover_soffice() == []


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def lo(recorder: Recorder) -> Iterator[LibreOfficeConverter]:
    require_soffice()
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(recorder)
    converter = LibreOfficeConverter(timeout_s=90, pool_size=2, hook=pm.hook)
    converter.start()
    yield converter
    converter.close()


@pytest.fixture
def table_html(tmp_path: Path) -> Path:
    path = tmp_path / "table page.html"  # a space: the input is copied under a safe name
    path.write_text(TABLE_HTML, encoding="utf-8")
    return path


def convert(
    lo: LibreOfficeConverter, tmp: Path, data: bytes | str, src: str, dst: str, **kw: object
) -> Path:
    path = tmp / f"in.{src}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    out = tmp / f"out-{src}.{dst}"
    lo.convert(path, out, source_format=src, target_format=dst, **kw)  # type: ignore[arg-type]
    assert out.stat().st_size > 0
    return out


class TestLibreOfficeContract(ConverterContract):
    @pytest.fixture
    def converter(self, lo: LibreOfficeConverter) -> LibreOfficeConverter:
        return lo

    @pytest.fixture
    def sample_document(self, table_html: Path) -> tuple[Path, str, str]:
        return table_html, "html", "Smørrebrød"

    @pytest.fixture
    def corrupt_document(self, tmp_path: Path) -> tuple[Path, str]:
        # Any bytes are valid HTML, so the corrupt input is a .docx that is no ZIP at all.
        path = tmp_path / "corrupt.docx"
        path.write_bytes(os.urandom(4096))
        return path, "docx"


# -- the table -------------------------------------------------------------------------------------


def test_formats_table_covers_the_issue() -> None:
    lo = LibreOfficeConverter()
    for src in (
        "docx",
        "doc",
        "odt",
        "fodt",
        "rtf",
        "txt",
        "html",
        "xlsx",
        "xls",
        "ods",
        "csv",
        "pptx",
        "ppt",
        "odp",
    ):
        assert {"pdf", "png"} - ({"png"} if src == "txt" else set()) <= lo.targets(src), src
    assert "odt" in lo.targets("docx") and "docx" in lo.targets("odt")
    assert "ods" in lo.targets("xlsx") and "xlsx" in lo.targets("ods")
    assert "odp" in lo.targets("pptx") and "pptx" in lo.targets("odp")
    assert "html" in lo.targets("docx")
    assert lo.targets("pdf") == frozenset()
    assert "docx" not in lo.targets("xlsx")  # across apps: not offered, so 422 at submission
    assert set(CONVERSIONS) == set(SOURCES)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pdfa": "4b"}, "pdfa"),
        ({"pdfa": True}, "pdfa"),
        ({"pdfua": "yes"}, "pdfua"),
        ({"page_range": "1-3;x"}, "page_range"),
        ({"page_range": "0-2"}, "from 1"),
        ({"page_range": 3}, "page_range"),
        ({"export_bookmarks": 1}, "export_bookmarks"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"quality": True}, "quality"),
        ({"max_image_resolution": 100}, "max_image_resolution"),
        ({"password": ""}, "password"),
        ({"password": 42}, "password"),
        ({"password": "x", "pdfa": "2b"}, "PDF/A forbids encryption"),
    ],
)
def test_bad_option_values_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as exc:
        LibreOfficeConverter().validate_options("docx", "pdf", options)
    assert exc.value.code == "invalid_option"


def test_good_options_and_foreign_keys_pass() -> None:
    lo = LibreOfficeConverter()
    lo.validate_options(
        "docx",
        "pdf",
        {
            "pdfa": "2b",
            "pdfua": True,
            "page_range": "1-3,5",
            "export_bookmarks": False,
            "quality": 80,
            "max_image_resolution": 300,
            "strict": True,
            "anything": [1],
        },
    )
    lo.validate_options("docx", "odt", {"strict": True})  # keys it does not own: ignored
    with pytest.raises(ValidationError, match="only to pdf") as exc:
        lo.validate_options("docx", "odt", {"pdfa": "1b"})
    assert exc.value.code == "invalid_option"
    with pytest.raises(ValidationError) as exc:
        lo.validate_options("xlsx", "docx", {})
    assert exc.value.code == "unsupported_conversion"


def test_locale_helpers() -> None:
    assert paper_for_locale("en-US") == "letter"
    assert paper_for_locale("de_DE") == "a4"
    assert paper_for_locale("fr") is None
    assert paper_for_locale(None) is None
    assert csv_import_options("de-DE").split(",")[5] == "1031"
    assert csv_import_options(None).split(",")[5] == ""


def test_settings_reach_the_converter() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    settings = Settings.from_env(
        {
            "OFFICE_TIMEOUT_SECONDS": "7.5",
            "OFFICE_POOL_SIZE": "3",
            "OFFICE_MAX_TASKS": "9",
            "OFFICE_MAX_RSS_MB": "300",
        }
    )
    converters = [
        c for group in pm.hook.register_converters(settings=settings, hook=pm.hook) for c in group
    ]
    [lo] = [c for c in converters if c.name == "libreoffice"]
    assert isinstance(lo, LibreOfficeConverter)
    assert (lo.timeout_s, lo.pool_size, lo.max_tasks, lo.max_rss_mb) == (7.5, 3, 9, 300)
    assert lo.hook is pm.hook
    assert LibreOfficeConverter().pool_size == (os.cpu_count() or 1)


def test_hook_register_converters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pm = get_plugin_manager(load_entry_points=False)
    converters = [
        c for group in pm.hook.register_converters(settings=Settings(), hook=pm.hook) for c in group
    ]
    assert [c for c in converters if c.name == "libreoffice"]
    # Registration spawned nothing and made no directory.
    assert list(tmp_path.iterdir()) == []


def test_missing_soffice(tmp_path: Path) -> None:
    converter = LibreOfficeConverter(binary="convkit-no-such-soffice")
    with pytest.raises(ServiceUnavailable, match="LibreOffice is not installed: apt-get install"):
        converter.check()
    src = tmp_path / "a.txt"
    src.write_text("x")
    with pytest.raises(ServiceUnavailable):
        converter.convert(src, tmp_path / "b", source_format="txt", target_format="pdf")
    assert libreoffice_version("convkit-no-such-soffice") is None


def test_missing_uno_interpreter_is_named(tmp_path: Path) -> None:
    require_soffice()
    fake = tmp_path / "python-without-uno"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    converter = LibreOfficeConverter(uno_python=str(fake))
    with pytest.raises(ServiceUnavailable, match="cannot import uno"):
        converter.check()


def test_start_failure_is_bounded_and_clear(tmp_path: Path) -> None:
    require_soffice()
    fake = tmp_path / "soffice"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    converter = LibreOfficeConverter(binary=str(fake), pool_size=1, start_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"LibreOffice cannot start: .*exited with status"):
        converter.start()
    assert time.monotonic() - started < 40
    converter.close()


def test_check_and_version() -> None:
    require_soffice()
    LibreOfficeConverter().check()
    version = libreoffice_version()
    assert version is not None
    assert version.startswith("LibreOffice ")


# -- conversions -----------------------------------------------------------------------------------


def test_html_table_to_pdf(lo: LibreOfficeConverter, table_html: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.pdf"
    lo.convert(table_html, dst, source_format="html", target_format="pdf")
    text = pdf_text(dst)
    for needle in ("Grüße aus Köln - Ωmega", "Crème brûlée", "7.50", "Smørrebrød", "12.00"):
        assert needle in text


def test_docx_to_pdf_odt_and_back(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    src = docx(["First paragraph Ærø", "Second"], tables=1, table_rows=3)
    pdf = convert(lo, tmp_path, src, "docx", "pdf")
    assert "First paragraph Ærø" in pdf_text(pdf)
    assert "R2C3 0" in pdf_text(pdf)
    odt = convert(lo, tmp_path, src, "docx", "odt")
    with zipfile.ZipFile(odt) as zf:
        assert "Ærø" in zf.read("content.xml").decode()
    back = convert(lo, tmp_path, odt.read_bytes(), "odt", "docx")
    with zipfile.ZipFile(back) as zf:
        assert "Ærø" in zf.read("word/document.xml").decode()


def test_xlsx_to_pdf_and_ods(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    src = xlsx([["Name", "Qty"], ["Widget", 3], ["Gadget", 5]])
    assert "Gadget" in pdf_text(convert(lo, tmp_path, src, "xlsx", "pdf"))
    ods = convert(lo, tmp_path, src, "xlsx", "ods")
    with zipfile.ZipFile(ods) as zf:
        assert "Gadget" in zf.read("content.xml").decode()


def test_odp_to_pptx_to_pdf(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    pptx = convert(lo, tmp_path, odp(["Slide one Ünïcode", "Slide two"]), "odp", "pptx")
    with zipfile.ZipFile(pptx) as zf:
        assert "ppt/slides/slide2.xml" in zf.namelist()
    pdf = convert(lo, tmp_path, pptx.read_bytes(), "pptx", "pdf")
    assert len(PdfReader(pdf).pages) == 2
    assert "Slide one Ünïcode" in pdf_text(pdf)


def test_fodt_txt_csv_to_pdf(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    assert "Flat ODT body" in pdf_text(convert(lo, tmp_path, fodt("Flat ODT body"), "fodt", "pdf"))
    assert "naïve café ∑ 42" in pdf_text(convert(lo, tmp_path, "naïve café ∑ 42\n", "txt", "pdf"))
    assert "Köln" in pdf_text(convert(lo, tmp_path, "City,Count\nKöln,7\n", "csv", "pdf"))


def test_png_of_the_first_page(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    out = convert(lo, tmp_path, docx(["one", "two"], page_breaks=True), "docx", "png")
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_docx_to_html_embeds_images(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    out = convert(lo, tmp_path, docx(["Hello HTML"], embedded_image=True), "docx", "html")
    html = out.read_text(encoding="utf-8", errors="replace")
    assert "Hello HTML" in html
    assert "data:image/png;base64," in html


def test_pdf_options(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    src = docx([f"Page {i}" for i in range(1, 6)], page_breaks=True)
    ranged = convert(lo, tmp_path, src, "docx", "pdf", options={"page_range": "2-3,5"})
    reader = PdfReader(ranged)
    assert [p.extract_text().strip() for p in reader.pages] == ["Page 2", "Page 3", "Page 5"]
    pdfa = convert(lo, tmp_path, src, "docx", "pdf", options={"pdfa": "2b", "pdfua": True})
    data = pdfa.read_bytes()
    assert b"pdfaid:part" in data and b"pdfaid:conformance" in data
    assert b"pdfuaid:part" in data
    locked = convert(lo, tmp_path, src, "docx", "pdf", options={"password": "s3cret"})
    reader = PdfReader(locked)
    assert reader.is_encrypted
    assert reader.decrypt("s3cret")
    assert "Page 1" in reader.pages[0].extract_text()


def test_locale_sets_number_formats_and_paper(lo: LibreOfficeConverter, tmp_path: Path) -> None:
    """The same XLSX renders 1234.5 as "1234,5" for de-DE and "1234.5" for en-US; the same HTML
    lands on A4 for de-DE and on Letter for en-US."""
    src = xlsx([["Amount"], [1234.5]])
    de = pdf_text(convert(lo, tmp_path, src, "xlsx", "pdf", locale="de-DE"))
    (tmp_path / "out-xlsx.pdf").unlink()
    us = pdf_text(convert(lo, tmp_path, src, "xlsx", "pdf", locale="en-US"))
    assert "1234,5" in de and "1234.5" not in de
    assert "1234.5" in us
    html = "<p>paper</p>"
    a4 = PdfReader(convert(lo, tmp_path, html, "html", "pdf", locale="de-DE")).pages[0]
    (tmp_path / "out-html.pdf").unlink()
    letter = PdfReader(convert(lo, tmp_path, html, "html", "pdf", locale="en-US")).pages[0]
    assert round(float(a4.mediabox.width)) == 595
    assert round(float(letter.mediabox.width)) == 612


def test_concurrent_conversions_use_both_processes(
    lo: LibreOfficeConverter, tmp_path: Path, table_html: Path
) -> None:
    import threading

    errors: list[BaseException] = []
    before = {i["slot"]: i["tasks"] for i in lo.pool.process_info()}

    def run(i: int) -> None:
        try:
            for j in range(3):
                lo.convert(
                    table_html, tmp_path / f"{i}-{j}.pdf", source_format="html", target_format="pdf"
                )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    after = {i["slot"]: i["tasks"] for i in lo.pool.process_info()}
    assert sum(after.values()) - sum(before.values()) == 6
    assert all(after[s] > before[s] for s in after)


# -- events ----------------------------------------------------------------------------------------


def test_hook_conversion_finished(
    lo: LibreOfficeConverter, recorder: Recorder, tmp_path: Path
) -> None:
    n = len(recorder.of("conversion_finished"))
    convert(lo, tmp_path, "event\n", "txt", "pdf")
    [event] = recorder.of("conversion_finished")[n:]
    assert event["converter"] == "libreoffice"
    assert (event["source_format"], event["target_format"], event["outcome"]) == (
        "txt",
        "pdf",
        "ok",
    )
    assert 0 < event["duration_s"] < 90
    bad = tmp_path / "bad.docx"
    bad.write_bytes(b"not a document at all")
    with pytest.raises(Exception, match="could not"):
        lo.convert(bad, tmp_path / "bad.pdf", source_format="docx", target_format="pdf")
    assert recorder.of("conversion_finished")[-1]["outcome"] == "error"


def test_hook_converter_pool_changed(
    lo: LibreOfficeConverter, recorder: Recorder, tmp_path: Path
) -> None:
    n = len(recorder.of("converter_pool_changed"))
    convert(lo, tmp_path, "pool\n", "txt", "pdf")
    events = recorder.of("converter_pool_changed")[n:]
    assert {e["converter"] for e in events} == {"libreoffice"}
    # Taken (one more busy), then given back (all idle again).
    assert events[0]["busy"] >= 1
    assert events[-1] == {"converter": "libreoffice", "busy": 0, "idle": 2}


def test_hook_converter_process_restarted(recorder: Recorder, tmp_path: Path) -> None:
    """A pool of one with OFFICE_MAX_TASKS=1 recycles its process after each conversion."""
    require_soffice()
    pm = get_plugin_manager(load_entry_points=False)
    mine = Recorder()
    pm.register(mine)
    converter = LibreOfficeConverter(pool_size=1, max_tasks=1, hook=pm.hook)
    try:
        src = tmp_path / "a.txt"
        src.write_text("recycle me\n")
        converter.convert(src, tmp_path / "a.pdf", source_format="txt", target_format="pdf")
        assert mine.of("converter_process_restarted") == [
            {"converter": "libreoffice", "reason": "max_tasks"}
        ]
        # No conversion lost: the next one waits for the fresh process.
        converter.convert(src, tmp_path / "b.pdf", source_format="txt", target_format="pdf")
        assert "recycle me" in pdf_text(tmp_path / "b.pdf")
        assert [i["generation"] for i in converter.pool.process_info()] in ([2], [3])
    finally:
        converter.close()


def test_a_broken_plugin_never_breaks_a_conversion(tmp_path: Path) -> None:
    require_soffice()

    class Broken:
        from convkit import hookimpl as _hookimpl

        @_hookimpl
        def conversion_finished(self) -> None:
            raise RuntimeError("plugin bug")

        @_hookimpl
        def converter_pool_changed(self) -> None:
            raise RuntimeError("plugin bug")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Broken())
    converter = LibreOfficeConverter(pool_size=1, hook=pm.hook)
    try:
        src = tmp_path / "a.txt"
        src.write_text("still fine\n")
        converter.convert(src, tmp_path / "a.pdf", source_format="txt", target_format="pdf")
        assert "still fine" in pdf_text(tmp_path / "a.pdf")
    finally:
        converter.close()


def test_hook_doctor_checks(tmp_path: Path) -> None:
    """The LibreOffice plugin's doctor checks, gathered through the hook: none of them is a
    readiness check (``/ready`` stays cheap), and each answers."""
    require_soffice()
    kit = convkit.ConvKit.from_settings(
        Settings(database_url=f"sqlite:///{tmp_path}/d.db", storage_url="memory://"),
        migrate=True,
    )
    try:
        checks = [c for group in kit.pm.hook.doctor_checks(kit=kit) for c in group]
        assert not any(c.readiness for c in checks)
        results = {c.name: c.result() for c in checks}
    finally:
        kit.close()
    assert all(ok for ok, _ in results.values()), results
    report = {name: detail for name, (_, detail) in results.items()}
    assert report["LibreOffice"].startswith("LibreOffice ")
    assert "/usr/bin/python3" in report["UNO interpreter"] or "bundled" in report["UNO interpreter"]
    assert "DejaVu" in report["Fonts"] or report["Fonts"]
    assert report["Pool"].startswith("ok"), report["Pool"]


def test_formats_md_is_generated_from_the_table() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_formats_doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shut_down_converter_starts_nothing(tmp_path: Path) -> None:
    """After shutdown() (what ConvKit.close calls), a late caller (a job still running, a
    warm-up thread) gets ServiceUnavailable instead of a new pool nothing would ever stop."""
    before = {pid for pid, _ in leftover_soffice()}  # other tests' pools may be running
    converter = LibreOfficeConverter()
    converter.shutdown()
    src = tmp_path / "a.txt"
    src.write_text("late")
    with pytest.raises(ServiceUnavailable, match="closed"):
        converter.convert(src, tmp_path / "a.pdf", source_format="txt", target_format="pdf")
    assert {pid for pid, _ in leftover_soffice()} <= before
