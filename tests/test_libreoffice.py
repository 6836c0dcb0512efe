"""The LibreOffice converter against a real soffice (skipped locally without one, failed in CI).

Conversions share two cores with the rest of the suite, so this module runs about ten of them,
reusing one converter (and so its warm profiles) where it can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader

from convkit import Settings, get_plugin_manager
from convkit.backends.libreoffice import (
    CONVERSIONS,
    LibreOfficeConverter,
    libreoffice_version,
)
from convkit.errors import ConversionTimeout, ServiceUnavailable, ValidationError
from convkit.testing.converter import ConverterContract

pytestmark = pytest.mark.libreoffice

TABLE_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<h1>Grüße aus Köln - Ωmega</h1>
<table border="1"><tr><th>Item</th><th>Price</th></tr>
<tr><td>Crème brûlée</td><td>7.50</td></tr><tr><td>Smørrebrød</td><td>12.00</td></tr></table>
</body></html>"""


def _require_soffice() -> None:
    if shutil.which("soffice") or shutil.which("libreoffice"):
        return
    reason = "LibreOffice (soffice) is not on PATH"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def pdf_text(path: Path) -> str:
    assert path.read_bytes().startswith(b"%PDF")
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies, straight from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(errors="replace")
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(")") + 2 :].split()[:3]
        if state != "Z" and int(pgrp) == pgid:
            members.append(int(entry.name))
    return members


@pytest.fixture(scope="module")
def lo() -> Iterator[LibreOfficeConverter]:
    _require_soffice()
    converter = LibreOfficeConverter(timeout_s=90)
    yield converter
    converter.close()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory standing in for /tmp, to see what conversions leave behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.fixture
def table_html(tmp_path: Path) -> Path:
    path = tmp_path / "table page.html"  # a space: the input is copied under a safe name
    path.write_text(TABLE_HTML, encoding="utf-8")
    return path


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


def test_html_table_to_pdf(lo: LibreOfficeConverter, table_html: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.pdf"
    lo.convert(table_html, dst, source_format="html", target_format="pdf")
    text = pdf_text(dst)
    for needle in ("Grüße aus Köln - Ωmega", "Crème brûlée", "7.50", "Smørrebrød", "12.00"):
        assert needle in text
    # pdftotext agrees (a second, independent reader of the same file).
    if shutil.which("pdftotext"):
        out = subprocess.run(
            ["pdftotext", "-layout", str(dst), "-"], capture_output=True, check=True
        ).stdout.decode()
        assert "Crème brûlée" in out
        assert "12.00" in out


def test_docx_round_trip(lo: LibreOfficeConverter, table_html: Path, tmp_path: Path) -> None:
    docx = tmp_path / "mid.docx"
    lo.convert(table_html, docx, source_format="html", target_format="docx")
    with zipfile.ZipFile(docx) as zf:
        assert "Smørrebrød" in zf.read("word/document.xml").decode()
    pdf = tmp_path / "out.pdf"
    lo.convert(docx, pdf, source_format="docx", target_format="pdf")
    assert "Crème brûlée" in pdf_text(pdf)


def test_txt_to_pdf_leaves_no_temp_dirs(private_tmp: Path, tmp_path: Path) -> None:
    _require_soffice()
    converter = LibreOfficeConverter(timeout_s=90)
    src = tmp_path / "note.txt"
    src.write_text("Plain text: naïve café ∑ 42\nsecond line\n", encoding="utf-8")
    dst = tmp_path / "note.pdf"
    converter.convert(src, dst, source_format="txt", target_format="pdf")
    assert "naïve café ∑ 42" in pdf_text(dst)
    # Only the pooled profile remains until close().
    assert [p.name.startswith("convkit-lo-profile-") for p in private_tmp.iterdir()] == [True]
    converter.close()
    assert list(private_tmp.iterdir()) == []


class _Recording(LibreOfficeConverter):
    """Remembers the pid (= process group id) of every soffice it starts."""

    def __init__(self, timeout_s: float | None = None) -> None:
        super().__init__(timeout_s=timeout_s)
        self.pids: list[int] = []

    def _spawn(self, cmd: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = super()._spawn(cmd, cwd=cwd, env=env)
        self.pids.append(proc.pid)
        return proc


def test_timeout_kills_the_process_group(
    table_html: Path, tmp_path: Path, private_tmp: Path
) -> None:
    _require_soffice()
    converter = _Recording(timeout_s=0.3)
    with pytest.raises(ConversionTimeout, match=r"longer than 0\.3s"):
        converter.convert(table_html, tmp_path / "x.pdf", source_format="html", target_format="pdf")
    [pgid] = converter.pids
    assert live_group_members(pgid) == []
    assert not (tmp_path / "x.pdf").exists()
    # The work dir is gone and the profile of the killed run was discarded, not pooled.
    assert list(private_tmp.iterdir()) == []
    converter.close()


def test_concurrent_conversions(lo: LibreOfficeConverter, table_html: Path, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            lo.convert(table_html, tmp_path / f"{i}.pdf", source_format="html", target_format="pdf")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i in range(2):
        assert "Smørrebrød" in pdf_text(tmp_path / f"{i}.pdf")


def test_targets_table() -> None:
    lo = LibreOfficeConverter()
    assert lo.targets("html") == {"pdf", "docx", "odt"}
    assert {"pdf", "odt"} <= lo.targets("docx")
    assert "docx" in lo.targets("odt")
    assert lo.targets("xlsx") == {"pdf", "ods"}
    assert lo.targets("ods") == {"pdf", "xlsx"}
    assert lo.targets("pptx") == lo.targets("odp") == {"pdf"}
    assert all("pdf" in targets for targets in CONVERSIONS.values())


def test_unsupported_pair_spawns_nothing(tmp_path: Path) -> None:
    converter = _Recording()
    with pytest.raises(ValidationError) as exc:
        converter.convert(tmp_path / "a", tmp_path / "b", source_format="pdf", target_format="docx")
    assert exc.value.code == "unsupported_conversion"
    assert converter.pids == []


def test_missing_soffice(tmp_path: Path) -> None:
    converter = LibreOfficeConverter(binary="convkit-no-such-soffice")
    with pytest.raises(ServiceUnavailable, match="LibreOffice is not installed: apt-get install"):
        converter.check()
    with pytest.raises(ServiceUnavailable):
        converter.convert(tmp_path / "a", tmp_path / "b", source_format="txt", target_format="pdf")
    assert libreoffice_version("convkit-no-such-soffice") is None


def test_check_and_version() -> None:
    _require_soffice()
    LibreOfficeConverter().check()
    version = libreoffice_version()
    assert version is not None
    assert version.startswith("LibreOffice ")


def test_timeout_comes_from_settings() -> None:
    """The plugin passes OFFICE_TIMEOUT_S from the instance's settings to the converter."""
    assert LibreOfficeConverter().timeout_s == 120
    pm = get_plugin_manager(load_entry_points=False)
    settings = Settings.from_env({"OFFICE_TIMEOUT_S": "7.5"})
    converters = [
        c for group in pm.hook.register_converters(settings=settings, hook=pm.hook) for c in group
    ]
    [lo] = [c for c in converters if c.name == "libreoffice"]
    assert isinstance(lo, LibreOfficeConverter)
    assert lo.timeout_s == 7.5


def test_hook_register_converters(private_tmp: Path) -> None:
    pm = get_plugin_manager(load_entry_points=False)
    converters = [
        c for group in pm.hook.register_converters(settings=Settings(), hook=pm.hook) for c in group
    ]
    [lo] = [c for c in converters if c.name == "libreoffice"]
    assert isinstance(lo, LibreOfficeConverter)
    # Registration spawned nothing and made no directory.
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == os.getpid()]
    assert children == []
    assert list(private_tmp.iterdir()) == []


def _ppid(proc_dir: Path) -> int | None:
    try:
        stat = (proc_dir / "stat").read_text(errors="replace")
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])
